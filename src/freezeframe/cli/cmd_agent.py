"""``freezeframe agent``: runs the plans on their schedules, in the foreground (systemd: see
contrib/freezeframe-agent.service). SIGHUP reloads the plans file; SIGTERM stops safely."""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import UTC, datetime
from types import FrameType

from freezeframe.cli.context import CommandContext
from freezeframe.cli.plansfile import add_config_option
from freezeframe.plans import config
from freezeframe.plans.agent import Agent
from freezeframe.plans.metrics import PlanMetrics


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)


def run(ctx: CommandContext) -> int:
    agent = Agent(ctx.args.config or config.default_path(), log=_log)

    def stop(signum: int, frame: FrameType | None) -> None:
        _log(f"agent: {signal.Signals(signum).name}: stopping the runs safely")
        agent.stop()

    def reload(signum: int, frame: FrameType | None) -> None:
        agent.request_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    settings = agent.plans.agent
    metrics = PlanMetrics(lambda: agent.history, lambda: sorted(agent.plans.plans), agent.overdue)
    if settings.metrics_listen:
        host, _, port = settings.metrics_listen.rpartition(":")
        metrics.serve(host, int(port))
        _log(f"agent: metrics on http://{settings.metrics_listen}/metrics")
    if settings.metrics_textfile:
        textfile = settings.metrics_textfile
        agent.on_tick = lambda: metrics.write_textfile(textfile)
    _log(f"agent: {len(agent.plans.plans)} plans from {agent.config_path}")
    agent.serve()
    return 0


def _log(line: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    sys.stderr.write(f"{stamp} {line}\n")
    sys.stderr.flush()
