"""``freezeframe agent``: fires the plans' schedules, at most one run per plan at a time.

One loop, driven by ``tick`` (fire what is due, alert what is overdue, say how long until the
next thing), so tests drive a compressed day through it with their own clock. Runs happen in
threads, each in a child ``freezeframe`` process (see runner). SIGHUP reloads the plans file:
a broken file is rejected and the old plans keep running. SIGTERM stops the runs safely (their
processes thaw and resume what they hold, remove their snapshots, leave the repository valid)
and then the agent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from freezeframe.errors import FreezeframeError
from freezeframe.plans import config
from freezeframe.plans.config import PlansFile
from freezeframe.plans.history import History, Run
from freezeframe.plans.notify import Event
from freezeframe.plans.runner import RunControl, notifier_for, run_check, run_plan
from freezeframe.plans.schedule import Schedule
from freezeframe.plans.status import is_overdue, utc

IDLE_S = 60.0  # the longest the loop sleeps: a changed clock (NTP, suspend) is noticed soon
STOP_GRACE_S = 300.0  # how long SIGTERM waits for runs to stop safely
CHECK = ":check"  # a plan's integrity checks are recorded as PLAN:check


@dataclass
class _Slot:
    """A plan's next backup and check, and whether it is overdue-alerted already."""

    backup: float | None
    check: float | None
    overdue_alerted: bool = False


@dataclass
class _Running:
    thread: threading.Thread
    control: RunControl
    queued: bool = False


@dataclass
class Agent:
    config_path: str
    clock: Callable[[], float] = time.time
    log: Callable[[str], None] = print
    plans: PlansFile = field(init=False)
    history: History = field(init=False)
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _running: dict[str, _Running] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _reload: bool = False
    _stopping: bool = False
    started: float = 0.0
    on_tick: Callable[[], None] | None = None  # e.g. the metrics textfile, after every tick

    def __post_init__(self) -> None:
        self.plans = config.load(self.config_path)
        self.history = History(self.plans.state.path)

    # --- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        """Until ``stop``: fire schedules, sleeping between them."""
        self.begin()
        while not self._stopping:
            if self._reload:
                self._reload = False
                self.reload()
            delay = self.tick()
            self._wake.wait(min(delay, IDLE_S))
            self._wake.clear()
        self.finish()

    def begin(self) -> None:
        """Once at start: runs left 'running' by a dead agent are marked, missed schedules
        run once (plans with catch_up), and every plan's next times are computed."""
        now = self.clock()
        self.started = now
        marked = self.history.interrupt_running(now)
        if marked:
            self.log(f"agent: {marked} runs left by an agent that stopped marked interrupted")
        self._plan_slots(now, catch_up=True)

    def tick(self) -> float:
        """Fire what is due now; returns the seconds until the next fire time."""
        now = self.clock()
        for name, slot in list(self._slots.items()):
            if slot.backup is not None and slot.backup <= now:
                slot.backup = self._next(name, now, check=False)
                self.fire(name, "schedule")
            if slot.check is not None and slot.check <= now:
                slot.check = self._next(name, now, check=True)
                self.fire(name, "check")
            self._alert_if_overdue(name, slot, now)
        if self.on_tick is not None:
            self.on_tick()
        times = [t for s in self._slots.values() for t in (s.backup, s.check) if t is not None]
        return max(0.0, min(times) - now) if times else IDLE_S

    def fire(self, name: str, trigger: str) -> None:
        """Start a run of the plan in a thread, unless one runs: then skip or queue it."""
        with self._lock:
            running = self._running.get(name)
            if running is not None and running.thread.is_alive():
                plan = self.plans.plans[name]
                if plan.overlap == "queue" and trigger != "check":
                    running.queued = True
                    self.log(f"plan {name}: still running; the {trigger} run is queued")
                else:
                    now = self.clock()
                    skipped = Run(name, "skipped", trigger, now, now, plan.consistency)
                    skipped.error = "the previous run was still running"
                    self.history.record(skipped)
                    self.log(f"plan {name}: still running; the {trigger} run is skipped")
                return
            control = RunControl()
            thread = threading.Thread(
                target=self._run, args=(name, trigger, control), name=f"plan-{name}"
            )
            self._running[name] = _Running(thread, control)
            thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def finish(self) -> None:
        """Stop every run safely and wait for them (SIGTERM)."""
        with self._lock:
            running = list(self._running.values())
            for entry in running:
                entry.queued = False
                entry.control.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for entry in running:
            entry.thread.join(max(0.0, deadline - time.monotonic()))
        self.log("agent: stopped")

    def wait_idle(self) -> None:
        """Until no run is going (a queued run started meanwhile included)."""
        while True:
            with self._lock:
                threads = [r.thread for r in self._running.values() if r.thread.is_alive()]
            if not threads:
                return
            for thread in threads:
                thread.join()

    def reload(self) -> bool:
        """Re-read the plans file; a broken one is rejected and the running plans kept."""
        try:
            plans = config.load(self.config_path)
        except FreezeframeError as exc:
            self.log(f"agent: the plans file was not reloaded, the old plans keep running: {exc}")
            return False
        self.plans = plans
        if plans.state.path != self.history.path:
            self.history = History(plans.state.path)
        self._plan_slots(self.clock(), catch_up=False)
        self.log(f"agent: reloaded {self.config_path}: {len(plans.plans)} plans")
        return True

    def overdue(self, name: str, now: float | None = None) -> bool:
        """Overdue since this agent started watching (``status`` counts from the first run)."""
        now = self.clock() if now is None else now
        return is_overdue(name, self.plans, self.history, now, since=self.started or now)

    # --- inside ---------------------------------------------------------------------------

    def _plan_slots(self, now: float, *, catch_up: bool) -> None:
        slots = {}
        for name, plan in self.plans.plans.items():
            old = self._slots.get(name)
            slots[name] = _Slot(
                self._next(name, now, check=False),
                self._next(name, now, check=True),
                old.overdue_alerted if old else False,
            )
            if catch_up and plan.catch_up and plan.schedule:
                schedule = Schedule.parse(plan.schedule, plan.timezone)
                last = self._last_fire(name)
                missed = schedule.missed(utc(last) if last else None, utc(now))
                if missed is not None:
                    self.log(f"plan {name}: the run due {missed.isoformat()} was missed")
                    self._slots = {**self._slots, **slots}
                    self.fire(name, "missed")
        self._slots = slots

    def _next(self, name: str, now: float, *, check: bool) -> float | None:
        plan = self.plans.plans[name]
        expressions = plan.check.schedule if check else plan.schedule
        if not expressions:
            return None
        return Schedule.parse(expressions, plan.timezone).next_after(utc(now)).timestamp()

    def _last_fire(self, name: str) -> float | None:
        for run in self.history.runs(name, limit=50):
            if run.trigger in ("schedule", "missed"):
                return run.started
        return None

    def _run(self, name: str, trigger: str, control: RunControl) -> None:
        while True:
            try:
                if trigger == "check":
                    run_check(name, self.plans, self.history, control=control, clock=self.clock,
                              log=self.log)  # fmt: skip
                else:
                    run = run_plan(name, self.plans, self.history, trigger=trigger,
                                   control=control, clock=self.clock, log=self.log)  # fmt: skip
                    if run.status in ("success", "degraded") and name in self._slots:
                        self._slots[name].overdue_alerted = False
            except Exception as exc:  # noqa: BLE001 - one plan's bug must not end the agent
                self.log(f"plan {name}: the run failed unexpectedly: {exc!r}")
            with self._lock:
                entry = self._running.get(name)
                if entry is None or not entry.queued or self._stopping:
                    return
                entry.queued = False
                trigger = "schedule"

    def _alert_if_overdue(self, name: str, slot: _Slot, now: float) -> None:
        running = self._running.get(name)
        if slot.overdue_alerted or (running is not None and running.thread.is_alive()):
            return
        if not self.overdue(name, now):
            return
        slot.overdue_alerted = True
        plan = self.plans.plans[name]
        message = f"plan {name}: overdue, no successful run within its schedule and grace"
        self.log(message)
        event = Event(kind="overdue", plan=name, message=message, run=None, time=now)
        for error in notifier_for(plan, self.plans).alert(event):
            self.log(f"plan {name}: notify: {error}")
