"""Restoring snapshots into a directory without ever writing outside it."""
