"""Alerts (a run failed or degraded, a plan is overdue) by webhook and email, and
healthchecks-style pings (start, success, fail).

Built on the standard library's ``urllib.request`` and ``smtplib``: three protocols need no
dependency, and, unlike apprise's yes/no answer, they give the reason a delivery failed.

Nothing here raises on a delivery problem: an unreachable webhook or mail server must neither
fail nor crash a backup run. Each call returns the errors, for the caller to log.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Literal

from freezeframe import __version__

SCHEMA = "freezeframe.event/1"  # the webhook document's format; a change of meaning bumps it
EVENT_KINDS = ("failed", "degraded", "overdue", "success", "start")
PingKind = Literal["start", "success", "fail"]
PING_SUFFIX: dict[str, str] = {"start": "/start", "success": "", "fail": "/fail"}
# What of a run a webhook and a mail carry; the whole consistency report stays in the history.
RUN_SUMMARY = (
    "id",
    "status",
    "trigger",
    "started",
    "ended",
    "duration_s",
    "requested",
    "achieved",
    "pause_ms",
    "bytes_read",
    "bytes_added",
    "snapshots",
    "error",
)
SMTPS_PORT = 465  # implicit TLS; STARTTLS on it would wait for a greeting that never comes
_USER_AGENT = f"freezeframe/{__version__}"
_PING_BODY_MAX = 10_000  # healthchecks keeps the first 100 kB of a ping's body as its log


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    starttls: bool = True  # ignored on port 465, which is TLS from the start
    username: str | None = None
    password_file: str | None = None  # a file, so the password stays out of the plans file
    sender: str = "freezeframe@localhost"


@dataclass(frozen=True)
class NotifyTargets:
    webhook: tuple[str, ...] = ()  # JSON POST of the event
    email: tuple[str, ...] = ()  # recipients, of one mail per event
    smtp: SmtpSettings | None = None
    ping: str | None = None  # base URL: base + "/start", base (success), base + "/fail"
    on: tuple[str, ...] = ("failed", "degraded", "overdue")  # the events that alert


@dataclass(frozen=True)
class Event:
    """Something to tell. ``run`` is ``Run.to_json()``; ``time`` UNIX seconds, None for now."""

    kind: str  # one of EVENT_KINDS
    plan: str
    message: str
    run: dict[str, Any] | None = None
    time: float | None = None

    def document(self, host: str | None = None) -> dict[str, Any]:
        """The webhook body: the same keys for every event, so receivers can rely on them."""
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "plan": self.plan,
            "message": self.message,
            "host": host or socket.gethostname(),
            "time": _iso(self.time),
            "run": run_summary(self.run),
        }


def run_summary(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run's headline fields, each present (None when unknown), without the long report."""
    if run is None:
        return None
    return {key: run.get(key) for key in RUN_SUMMARY}


class Notifier:
    """Delivers one plan's alerts and pings to its targets."""

    def __init__(
        self, targets: NotifyTargets, timeout_s: float = 10.0, host: str | None = None
    ) -> None:
        self.targets = targets
        self.timeout_s = timeout_s
        self.host = host or socket.gethostname()

    def alert(self, event: Event) -> list[str]:
        """Sends the event to every webhook and the email recipients if ``on`` names its kind;
        returns the delivery errors."""
        if event.kind not in self.targets.on:
            return []
        errors: list[str] = []
        body = json.dumps(event.document(self.host), sort_keys=True).encode()
        for url in self.targets.webhook:
            error = self._http(url, body, "application/json")
            if error:
                errors.append(f"webhook {redact(url)}: {error}")
        if self.targets.email:
            error = self._mail(event)
            if error:
                errors.append(f"email to {', '.join(self.targets.email)}: {error}")
        return errors

    def ping(self, kind: PingKind, message: str = "") -> list[str]:
        """Pings the healthchecks-style URL, if any: GET, or POST with ``message`` as the body
        (healthchecks shows it as the ping's log). Returns the errors."""
        base = self.targets.ping
        if base is None:
            return []
        if kind not in PING_SUFFIX:
            return [f"ping: unknown kind {kind!r}"]
        url = base.rstrip("/") + PING_SUFFIX[kind]
        body = message.encode()[:_PING_BODY_MAX] if message else None
        error = self._http(url, body, "text/plain; charset=utf-8")
        return [f"ping {kind} {redact(url)}: {error}"] if error else []

    def _http(self, url: str, body: bytes | None, content_type: str) -> str | None:
        """One request; the error as a line, or None. Only http(s): ``urllib`` would also open
        ``file:`` and ``ftp:`` URLs."""
        headers = {"User-Agent": _USER_AGENT}
        if body is not None:
            headers["Content-Type"] = content_type
        method = "GET" if body is None else "POST"
        try:
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                return "not an http or https URL"
            request = urllib.request.Request(url, data=body, headers=headers, method=method)
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            return str(exc.reason)
        except Exception as exc:  # noqa: BLE001 - a delivery must never fail the run
            return f"{type(exc).__name__}: {exc}"
        return None

    def _mail(self, event: Event) -> str | None:
        smtp = self.targets.smtp
        if smtp is None:
            return "no smtp settings in the plans file"
        try:
            message = self._message(event, smtp)
            context = ssl.create_default_context()
            client: smtplib.SMTP
            if smtp.port == SMTPS_PORT:
                client = smtplib.SMTP_SSL(
                    smtp.host, smtp.port, timeout=self.timeout_s, context=context
                )
            else:
                client = smtplib.SMTP(smtp.host, smtp.port, timeout=self.timeout_s)
            with client:
                if smtp.starttls and smtp.port != SMTPS_PORT:
                    client.starttls(context=context)
                if smtp.username:
                    client.login(smtp.username, _password(smtp))
                refused = client.send_message(message)
        except Exception as exc:  # noqa: BLE001 - a delivery must never fail the run
            return f"{type(exc).__name__}: {exc}"
        if refused:
            return "refused " + ", ".join(sorted(refused))
        return None

    def _message(self, event: Event, smtp: SmtpSettings) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = f"[freezeframe] {event.plan}: {event.kind.upper()}"
        message["From"] = smtp.sender
        message["To"] = ", ".join(self.targets.email)
        message["Date"] = formatdate(event.time, localtime=False)
        message["Message-ID"] = make_msgid(domain=self.host)
        lines = [event.message, "", f"plan: {event.plan}", f"host: {self.host}"]
        lines.append(f"time: {_iso(event.time)}")
        summary = run_summary(event.run)
        if summary is not None:
            lines += ["", "run:"]
            lines += [f"  {key}: {_text(value)}" for key, value in summary.items()]
        message.set_content("\n".join(lines) + "\n")
        return message


def redact(url: str) -> str:
    """A URL fit for a log: webhook and ping URLs carry their secret in the path or query
    (Slack, healthchecks UUIDs), so only the scheme and host are shown."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "(a malformed URL)"
    hidden = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{hidden}"


def _password(smtp: SmtpSettings) -> str:
    if not smtp.password_file:
        raise ValueError(f"smtp username {smtp.username!r} has no password_file")
    with open(smtp.password_file, encoding="utf-8") as handle:
        return handle.read().rstrip("\r\n")


def _iso(seconds: float | None) -> str:
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat()


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)
