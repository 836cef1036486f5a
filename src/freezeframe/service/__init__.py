"""One function per operation, below every front end (the CLI, the plans runner, the coming API)."""
