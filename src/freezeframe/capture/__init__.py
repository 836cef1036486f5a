"""Capture: resolve sources to volumes and take point-in-time views of them (issue 3)."""
