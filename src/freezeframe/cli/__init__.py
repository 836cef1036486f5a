"""Command line: argument parsing and output only; the work happens in the layers below."""
