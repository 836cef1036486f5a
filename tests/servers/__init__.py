"""Real servers the tests start and stop themselves (nothing is started by hand): S3-compatible
object stores on loopback, each over a temporary directory (``rclone_s3``, ``seaweedfs``), and
the session fixtures that hold them (``fixtures``, imported by ``tests/conftest.py``)."""
