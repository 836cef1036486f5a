"""Snapshot providers, one module per file system, found by name."""
