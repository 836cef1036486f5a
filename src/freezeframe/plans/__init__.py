"""Backup plans run unattended: the plans file, schedules, run history, alerts and metrics."""
