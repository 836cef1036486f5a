"""Backup: walking the file system and turning it into snapshot trees."""
