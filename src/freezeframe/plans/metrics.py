"""Prometheus metrics of the plans, read from the run history at each scrape (or textfile
write), so they are always current and survive agent restarts without any state of their own.

Every metric has the label ``plan``. A plan's "last good" run is its latest ``success`` or
``degraded`` one (a degraded run made a snapshot, just at a lower level, which
``freezeframe_plan_last_consistency_level`` shows). Metrics of a run that never happened are
left out rather than reported as 0, so ``time() - last_success`` cannot claim 1970;
``freezeframe_plan_overdue`` covers a plan that never succeeded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from freezeframe.levels import Level
from freezeframe.plans.history import RESULTS, History, Run

GOOD = ("success", "degraded")
FINISHED = ("success", "degraded", "failed", "interrupted")  # skipped runs never ran
COUNTED = tuple(r for r in RESULTS if r != "running")  # a run still running has no result yet


class PlanMetrics:
    """The agent's metrics in a registry of their own (no process metrics of the default one
    mixed in). ``history`` may be a callable, for an agent that reopens its history on reload."""

    def __init__(
        self,
        history: History | Callable[[], History],
        plans: Callable[[], list[str]],
        overdue: Callable[[str], bool],
    ) -> None:
        self._history = history
        self.plans = plans
        self.overdue = overdue
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_PlansCollector(self))

    @property
    def history(self) -> History:
        return self._history if isinstance(self._history, History) else self._history()

    def serve(self, address: str, port: int) -> tuple[WSGIServer, threading.Thread]:
        """``/metrics`` over HTTP in a daemon thread; port 0 picks a free one
        (``server.server_port``). Stop with ``server.shutdown(); server.server_close()``."""
        return start_http_server(port, address, registry=self.registry)

    def write_textfile(self, path: str) -> None:
        """For node-exporter's textfile collector: written beside ``path`` and renamed over it,
        so the collector never reads half a file. ``path`` must end in ``.prom``."""
        write_to_textfile(path, self.registry)


class _PlansCollector(Collector):
    def __init__(self, metrics: PlanMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        history = self.metrics.history
        labels = ["plan"]
        last_success = GaugeMetricFamily(
            "freezeframe_plan_last_success_timestamp_seconds",
            "When the plan's last successful or degraded run ended, UNIX seconds.",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "freezeframe_plan_last_run_duration_seconds",
            "How long the plan's last finished run (of any result) took.",
            labels=labels,
        )
        bytes_added = GaugeMetricFamily(
            "freezeframe_plan_last_bytes_added",
            "Bytes the plan's last successful or degraded run added to the repository.",
            labels=labels,
        )
        level = GaugeMetricFamily(
            "freezeframe_plan_last_consistency_level",
            "Consistency the last successful or degraded run achieved:"
            " 0 none, 1 crash, 2 filesystem, 3 application.",
            labels=labels,
        )
        pause = GaugeMetricFamily(
            "freezeframe_plan_last_pause_seconds",
            "The longest freeze or pause of the last successful or degraded run.",
            labels=labels,
        )
        runs = CounterMetricFamily(
            "freezeframe_plan_runs",
            "Runs of the plan in the history, by result.",
            labels=["plan", "result"],
        )
        overdue = GaugeMetricFamily(
            "freezeframe_plan_overdue",
            "1 if the plan has had no successful run within its schedule and grace.",
            labels=labels,
        )
        for plan in self.metrics.plans():
            good = history.last(plan, GOOD)
            if good is not None:
                last_success.add_metric([plan], _ended(good))
                if good.bytes_added is not None:
                    bytes_added.add_metric([plan], float(good.bytes_added))
                if good.achieved in Level.ascending():
                    level.add_metric([plan], float(Level(good.achieved).rank))
                if good.pause_ms is not None:
                    pause.add_metric([plan], good.pause_ms / 1000.0)
            finished = history.last(plan, FINISHED)
            if finished is not None and finished.duration_s is not None:
                duration.add_metric([plan], finished.duration_s)
            counts = history.counts(plan)
            for result in COUNTED:
                runs.add_metric([plan, result], float(counts.get(result, 0)))
            overdue.add_metric([plan], 1.0 if self.metrics.overdue(plan) else 0.0)
        yield from (last_success, duration, bytes_added, level, pause, runs, overdue)


def _ended(run: Run) -> float:
    return run.ended if run.ended is not None else run.started
