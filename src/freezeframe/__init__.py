"""freezeframe: consistent, deduplicating, encrypted backups for Linux."""

__version__ = "0.1.0"
