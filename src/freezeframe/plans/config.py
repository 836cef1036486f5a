"""The plans file (TOML; ``/etc/freezeframe/plans.toml`` by default): what each backup plan backs
up, where, how consistent, when, and how long it keeps snapshots. Validated whole on load, so
a broken file is rejected before anything runs, with the file, the line and the field named.

    [state]
    path = "/var/lib/freezeframe/state.db"
    [plans.db]
    repository = "/srv/backup/repo"   # or s3:https://s3.example.org/bucket/prefix, ...
    password_file = "/etc/freezeframe/repo.pw"
    environment_file = "/etc/freezeframe/s3.env"   # credentials, for this plan's runs only
    sources = ["/srv/pg"]
    consistency = "application"
    quiesce = ["postgresql:host=/run/postgresql dbname=postgres"]
    schedule = ["0 2 * * *"]
    [plans.db.retention]
    keep_daily = 7
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from freezeframe.capture.providers.lvm_report import parse_snapshot_size
from freezeframe.errors import UsageError
from freezeframe.levels import AUTO, Level
from freezeframe.plans import envfile
from freezeframe.plans.history import DEFAULT_PATH as DEFAULT_STATE_PATH
from freezeframe.plans.schedule import Schedule, ScheduleError
from freezeframe.repository.retention import RetentionPolicy, parse_duration
from freezeframe.storage.registry import check_location

DEFAULT_PATH = "/etc/freezeframe/plans.toml"
PATH_ENV = "FREEZEFRAME_PLANS"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Count = Annotated[int, Field(ge=-1)]  # -1: unlimited, as forget's --keep-*
AlertKind = Literal["failed", "degraded", "overdue"]
ALERT_KINDS: tuple[AlertKind, ...] = ("failed", "degraded", "overdue")


class _Strict(BaseModel):
    # No NaN or infinity: a cap or timeout of inf would never end (or overflow a timer).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StateSettings(_Strict):
    path: str = DEFAULT_STATE_PATH


class SmtpSettings(_Strict):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password_file: str | None = None
    sender: str = "freezeframe@localhost"


class AgentSettings(_Strict):
    metrics_listen: str | None = None  # "127.0.0.1:9884": /metrics over HTTP
    metrics_textfile: str | None = None  # for node-exporter's textfile collector
    overdue_grace_s: float = Field(default=3600, gt=0)

    @field_validator("metrics_listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9884")
        return value


class Retention(_Strict):
    """forget's --keep-* options, applied to the plan's own snapshots after every run."""

    keep_last: Count | None = None
    keep_hourly: Count | None = None
    keep_daily: Count | None = None
    keep_weekly: Count | None = None
    keep_monthly: Count | None = None
    keep_yearly: Count | None = None
    keep_within: str | None = None  # e.g. "30d"
    prune: bool = True  # remove the data no snapshot uses any more

    @field_validator("keep_within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)  # its ValueError says what is expected
        return value

    def policy(self) -> RetentionPolicy:
        within = parse_duration(self.keep_within) if self.keep_within else None
        counts = self.model_dump(exclude={"keep_within", "prune"})
        return RetentionPolicy(**counts, keep_within=within)


class Check(_Strict):
    schedule: list[str] = Field(default_factory=list)  # e.g. weekly: ["0 4 * * 0"]
    read_data_subset: str | None = None  # "10%" or "1/7"


class Hooks(_Strict):
    before: list[str] = Field(default_factory=list)  # a command that exits non-zero fails the run
    after: list[str] = Field(default_factory=list)  # after a successful (or degraded) run
    on_error: list[str] = Field(default_factory=list)  # after a failed run
    timeout_s: float = Field(default=600, gt=0)


class Notify(_Strict):
    webhook: list[str] = Field(default_factory=list)
    email: list[str] = Field(default_factory=list)
    ping: str | None = None  # healthchecks-style: URL/start, URL, URL/fail
    on: list[AlertKind] = Field(default_factory=lambda: list(ALERT_KINDS))


class Plan(_Strict):
    repository: str  # any location: a directory, s3:https://HOST/BUCKET/PREFIX, ...
    password_file: str | None = None
    environment_file: str | None = None  # KEY=VALUE lines for the plan's runs (plans/envfile.py)
    sources: list[str] = Field(default_factory=list)
    excludes: list[str] = Field(default_factory=list)
    vms: list[str] = Field(default_factory=list)
    consistency: str = AUTO  # one of Level.choices(): auto, or a level
    fallback: Literal["fail", "degrade"] = "fail"
    quiesce: list[str] = Field(default_factory=list)
    quiesce_cap_s: float | None = Field(default=None, gt=0)
    freeze_cap_s: float | None = Field(default=None, gt=0)
    snapshot_size: str | None = None  # an LVM thick snapshot's store: 512M, 25%
    schedule: list[str] = Field(default_factory=list)
    timezone: str | None = None
    catch_up: bool = True  # a schedule missed while the agent was down runs once at its start
    overlap: Literal["skip", "queue"] = "skip"  # a run due while the last still runs
    tags: list[str] = Field(default_factory=list)
    retention: Retention = Field(default_factory=Retention)
    check: Check = Field(default_factory=Check)
    hooks: Hooks = Field(default_factory=Hooks)
    notify: Notify = Field(default_factory=Notify)

    @field_validator("snapshot_size")
    @classmethod
    def _snapshot_size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_snapshot_size(value)
            except UsageError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("consistency", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        choices = Level.choices()
        if value not in choices:  # pydantic's own words for a Literal
            named = ", ".join(f"'{choice}'" for choice in choices[:-1])
            raise ValueError(f"Input should be {named} or '{choices[-1]}'")
        return value

    @field_validator("repository")
    @classmethod
    def _location(cls, value: str) -> str:
        try:
            check_location(value)  # its syntax only: nothing is sent, no credential read
        except UsageError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("environment_file")
    @classmethod
    def _private_file(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                envfile.read(value)  # read again by every run: a later change counts
            except UsageError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("sources", "vms")
    @classmethod
    def _absolute(cls, values: list[str], info: Any) -> list[str]:
        if info.field_name == "sources":
            for value in values:
                if not os.path.isabs(value):
                    raise ValueError(f"{value!r} is not an absolute path")
        return values

    def model_post_init(self, context: Any) -> None:
        if not self.sources and not self.vms:
            raise ValueError("nothing to back up: give sources or vms")


class PlansFile(_Strict):
    path: str = ""
    state: StateSettings = Field(default_factory=StateSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    smtp: SmtpSettings | None = None
    plans: dict[str, Plan] = Field(default_factory=dict)

    @field_validator("plans")
    @classmethod
    def _names(cls, plans: dict[str, Plan]) -> dict[str, Plan]:
        for name in plans:
            if not NAME.match(name):
                raise ValueError(f"plan name {name!r}: letters, digits, . _ - only")
        return plans

    def plan(self, name: str) -> Plan:
        if name not in self.plans:
            known = ", ".join(sorted(self.plans)) or "none"
            raise UsageError(f"{self.path}: no plan named {name!r} (plans: {known})")
        return self.plans[name]


def default_path() -> str:
    return os.environ.get(PATH_ENV) or DEFAULT_PATH


def load(path: str) -> PlansFile:
    """The plans file, validated; a UsageError names the file, the line and the field."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such plans file") from exc
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from exc
    text = raw.decode("utf-8", errors="replace")
    try:
        document = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or a number of thousands of digits
        raise UsageError(f"{path}: {exc}") from exc
    except RecursionError as exc:
        raise UsageError(f"{path}: values nested too deeply") from exc
    try:
        plans = PlansFile.model_validate({**document, "path": path})
    except ValidationError as exc:
        error = exc.errors()[0]
        location = [str(part) for part in error["loc"]]
        line = _line_of(text, location)
        where = f"{path}:{line}" if line else path
        field = ".".join(location) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise UsageError(f"{where}: {field}: {message}{more}") from exc
    _check_schedules(plans, text)
    return plans


def _check_schedules(plans: PlansFile, text: str) -> None:
    for name, plan in plans.plans.items():
        for field, expressions in (("schedule", plan.schedule), ("check", plan.check.schedule)):
            try:
                Schedule.parse(expressions, plan.timezone)
            except ScheduleError as exc:
                location = ["plans", name, field] + (["schedule"] if field == "check" else [])
                line = _line_of(text, location)
                where = f"{plans.path}:{line}" if line else plans.path
                raise UsageError(f"{where}: plans.{name}.{field}: {exc}") from exc


def _line_of(text: str, location: list[str]) -> int | None:
    """The line a field is set on: its key inside its table ([a.b] or a dotted key), else the
    table's header. Good enough for files people write; None when not found."""
    lines = text.splitlines()
    for depth in range(len(location), 0, -1):
        table, key = location[: depth - 1], location[depth - 1]
        inside = not table
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            header = re.match(r"^\[+\s*([^\]]+?)\s*\]+", stripped)
            if header:
                names = [part.strip().strip("\"'") for part in header.group(1).split(".")]
                inside = names == table
                if names == [*table, key]:
                    return number
                continue
            if inside and re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*=", stripped):
                return number
    return None
