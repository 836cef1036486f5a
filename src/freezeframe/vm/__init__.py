"""Backups of running QEMU virtual machines."""
