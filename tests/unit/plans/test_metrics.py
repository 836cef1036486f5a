"""Prometheus metrics from a real history, scraped over HTTP and written as a textfile."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from freezeframe.plans.history import History, Run
from freezeframe.plans.metrics import PlanMetrics

T = 1_700_000_000.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "all_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _run(plan: str, status: str, started: float, **fields: Any) -> Run:
    return Run(plan=plan, status=status, trigger="schedule", started=started, **fields)


@pytest.fixture
def history(tmp_path: Path) -> History:
    history = History(str(tmp_path / "state.db"))
    # nightly: an old success, a degraded run, then a failure (the latest)
    history.record(
        _run("nightly", "success", T, ended=T + 100, requested="application",
             achieved="application", pause_ms=40.0, bytes_read=1000, bytes_added=500)
    )  # fmt: skip
    history.record(
        _run("nightly", "degraded", T + 86400, ended=T + 86400 + 90, requested="application",
             achieved="crash", pause_ms=1500.0, bytes_read=2000, bytes_added=700)
    )  # fmt: skip
    history.record(
        _run("nightly", "failed", T + 2 * 86400, ended=T + 2 * 86400 + 12, error="disk full")
    )
    history.record(_run("nightly", "skipped", T + 2 * 86400 + 60, ended=T + 2 * 86400 + 60))
    # hourly: one success, then one still running
    history.record(
        _run("hourly", "success", T + 3600, ended=T + 3630, requested="filesystem",
             achieved="filesystem", pause_ms=250.0, bytes_read=10, bytes_added=0)
    )  # fmt: skip
    history.start("hourly", "manual", T + 7200, "filesystem")
    # another plan's runs that no metric should mention
    history.record(_run("gone", "success", T, ended=T + 1))
    return history


def _metrics(history: History, overdue: set[str] | None = None) -> PlanMetrics:
    late = overdue or set()
    return PlanMetrics(history, lambda: ["nightly", "hourly", "new"], lambda p: p in late)


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, plan: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted({"plan": plan, **labels}.items()))))


@pytest.fixture
def served(history: History) -> Iterator[tuple[PlanMetrics, str]]:
    metrics = _metrics(history, overdue={"nightly"})
    server, thread = metrics.serve("127.0.0.1", 0)
    yield metrics, f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def test_scrape_over_http(served: tuple[PlanMetrics, str]) -> None:
    _, url = served
    samples = _samples(_scrape(url))

    def value(name: str, plan: str, **labels: str) -> float | None:
        return _value(samples, name, plan, **labels)

    # the last good run of nightly is the degraded one
    assert value("freezeframe_plan_last_success_timestamp_seconds", "nightly") == T + 86490
    assert value("freezeframe_plan_last_bytes_added", "nightly") == 700
    assert value("freezeframe_plan_last_consistency_level", "nightly") == 1  # crash
    assert value("freezeframe_plan_last_pause_seconds", "nightly") == 1.5
    # the last finished run is the failure; the skip after it never ran
    assert value("freezeframe_plan_last_run_duration_seconds", "nightly") == 12
    assert value("freezeframe_plan_overdue", "nightly") == 1
    for result, count in {"success": 1, "degraded": 1, "failed": 1, "skipped": 1}.items():
        assert value("freezeframe_plan_runs_total", "nightly", result=result) == count
    assert value("freezeframe_plan_runs_total", "nightly", result="interrupted") == 0
    assert value("freezeframe_plan_runs_total", "nightly", result="running") is None

    # hourly's running run counts nowhere yet
    assert value("freezeframe_plan_last_success_timestamp_seconds", "hourly") == T + 3630
    assert value("freezeframe_plan_last_run_duration_seconds", "hourly") == 30
    assert value("freezeframe_plan_last_bytes_added", "hourly") == 0
    assert value("freezeframe_plan_last_consistency_level", "hourly") == 2
    assert value("freezeframe_plan_last_pause_seconds", "hourly") == 0.25
    assert value("freezeframe_plan_overdue", "hourly") == 0
    assert value("freezeframe_plan_runs_total", "hourly", result="success") == 1


def test_a_plan_without_runs_has_counts_and_overdue_only(
    served: tuple[PlanMetrics, str],
) -> None:
    _, url = served
    samples = _samples(_scrape(url))

    plans_of_new = {name for name, labels in samples if ("plan", "new") in labels}
    assert plans_of_new == {"freezeframe_plan_runs_total", "freezeframe_plan_overdue"}
    assert _value(samples, "freezeframe_plan_runs_total", "new", result="failed") == 0
    assert not any(("plan", "gone") in labels for _, labels in samples)


def test_every_scrape_reads_the_history_anew(
    served: tuple[PlanMetrics, str], history: History
) -> None:
    _, url = served
    _scrape(url)
    history.record(
        _run("nightly", "success", T + 3 * 86400, ended=T + 3 * 86400 + 50,
             achieved="application", pause_ms=30.0, bytes_added=42)
    )  # fmt: skip

    samples = _samples(_scrape(url))

    stamp = _value(samples, "freezeframe_plan_last_success_timestamp_seconds", "nightly")
    assert stamp == T + 3 * 86400 + 50
    assert _value(samples, "freezeframe_plan_last_consistency_level", "nightly") == 3
    assert _value(samples, "freezeframe_plan_last_bytes_added", "nightly") == 42
    assert _value(samples, "freezeframe_plan_runs_total", "nightly", result="success") == 2


def test_types_and_help(served: tuple[PlanMetrics, str]) -> None:
    _, url = served
    families = {f.name: f for f in text_string_to_metric_families(_scrape(url))}

    assert families["freezeframe_plan_runs"].type == "counter"
    for name in (
        "freezeframe_plan_last_success_timestamp_seconds",
        "freezeframe_plan_last_run_duration_seconds",
        "freezeframe_plan_last_bytes_added",
        "freezeframe_plan_last_consistency_level",
        "freezeframe_plan_last_pause_seconds",
        "freezeframe_plan_overdue",
    ):
        assert families[name].type == "gauge"
        assert families[name].documentation
    # its own registry: no process or Python metrics of the default one
    assert not any(name.startswith(("process_", "python_")) for name in families)


def test_history_given_as_a_callable(history: History) -> None:
    metrics = PlanMetrics(lambda: history, lambda: ["hourly"], lambda _: False)
    stamp = metrics.registry.get_sample_value(
        "freezeframe_plan_last_success_timestamp_seconds", {"plan": "hourly"}
    )
    assert stamp == T + 3630


def test_textfile(history: History, tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "freezeframe.prom"
    path.parent.mkdir()
    path.write_text("stale\n")
    metrics = _metrics(history)

    metrics.write_textfile(str(path))

    assert [p.name for p in path.parent.iterdir()] == ["freezeframe.prom"]  # no temporary left
    samples = _samples(path.read_text())
    assert _value(samples, "freezeframe_plan_last_bytes_added", "nightly") == 700
    assert _value(samples, "freezeframe_plan_overdue", "nightly") == 0
    assert _value(samples, "freezeframe_plan_runs_total", "hourly", result="success") == 1
