"""The ``--config`` option of the plan commands, and loading the file it names."""

from __future__ import annotations

import argparse

from freezeframe.plans import config
from freezeframe.plans.config import PlansFile


def add_config_option(parser: argparse.ArgumentParser, *, inner: bool = False) -> None:
    """``inner``: on an action's own parser (``plan run X --config F``), not overriding a value
    given before the action."""
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS if inner else None,
        metavar="FILE",
        help=f"the plans file (default ${config.PATH_ENV} or {config.DEFAULT_PATH})",
    )


def load(args: argparse.Namespace) -> PlansFile:
    return config.load(args.config or config.default_path())
