"""Alerts and pings against real servers on 127.0.0.1: an HTTP receiver and an SMTP sink."""

from __future__ import annotations

import base64
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from freezeframe.plans.notify import (
    RUN_SUMMARY,
    SCHEMA,
    Event,
    Notifier,
    NotifyTargets,
    SmtpSettings,
)

RUN = {
    "id": 7,
    "plan": "nightly",
    "status": "failed",
    "trigger": "schedule",
    "started": "2024-05-01T02:00:00+00:00",
    "ended": "2024-05-01T02:01:00+00:00",
    "duration_s": 60.0,
    "requested": "application",
    "achieved": None,
    "pause_ms": None,
    "bytes_read": 10,
    "bytes_added": 0,
    "snapshots": [],
    "error": "backup: disk full",
    "report": {"huge": "x" * 1000},
}
FAILED = Event("failed", "nightly", "plan nightly: failed: disk full", RUN, 1714528860.0)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy; the receivers are local."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver(ThreadingHTTPServer):
    """Records every request; paths under /broken answer 500."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Request] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server = cast(Receiver, self.server)
        server.requests.append(Request(self.command, self.path, dict(self.headers), body))
        status = 500 if self.path.startswith("/broken") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes
    auth: str | None

    def parsed(self) -> EmailMessage:
        data = self.data.replace(b"\r\n", b"\n")
        return cast(EmailMessage, message_from_bytes(data, policy=policy.default))


class SmtpSink(socketserver.ThreadingTCPServer):
    """Just enough SMTP for smtplib: EHLO (with AUTH PLAIN), AUTH, MAIL, RCPT, DATA, QUIT."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        self.mails: list[Mail] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _SmtpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        sink = cast(SmtpSink, self.server)
        sender, recipients, auth = "", [], None
        self._say("220 sink ESMTP")
        while line := self.rfile.readline():
            command = line.decode().rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self._say("250-sink", "250-AUTH PLAIN", "250 8BITMIME")
            elif verb == "AUTH":
                auth = base64.b64decode(command.split()[2]).decode()
                self._say("235 ok")
            elif verb == "MAIL":
                sender = command.split(":", 1)[1].split()[0].strip("<>")
                self._say("250 ok")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                self._say("250 ok")
            elif verb == "DATA":
                self._say("354 go on")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                sink.mails.append(Mail(sender, recipients, data, auth))
                self._say("250 queued")
            elif verb == "QUIT":
                self._say("221 bye")
                return
            else:
                self._say("502 not here")

    def _say(self, *lines: str) -> None:
        self.wfile.write("".join(f"{line}\r\n" for line in lines).encode())


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- webhooks -------------------------------------------------------------------------------


def test_webhook_posts_the_event_document(receiver: Receiver) -> None:
    notifier = Notifier(NotifyTargets(webhook=(receiver.url + "/hook",)), host="backup1")

    assert notifier.alert(FAILED) == []

    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("freezeframe/")
    document = json.loads(request.body)
    assert document == {
        "schema": SCHEMA,
        "kind": "failed",
        "plan": "nightly",
        "message": "plan nightly: failed: disk full",
        "host": "backup1",
        "time": "2024-05-01T02:01:00+00:00",
        "run": {key: RUN[key] for key in RUN_SUMMARY},
    }
    assert "report" not in document["run"]


def test_webhook_document_of_an_event_without_a_run(receiver: Receiver) -> None:
    event = Event("overdue", "nightly", "plan nightly: overdue")
    Notifier(NotifyTargets(webhook=(receiver.url,))).alert(event)

    document = json.loads(receiver.requests[0].body)
    assert document["run"] is None
    assert document["kind"] == "overdue"
    assert document["time"].endswith("+00:00")
    assert document["host"] == socket.gethostname()


def test_every_webhook_is_tried_and_each_failure_reported(receiver: Receiver) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/secret-token"
    hooks = (dead, receiver.url + "/broken/secret-token", receiver.url + "/ok")
    errors = Notifier(NotifyTargets(webhook=hooks), timeout_s=5).alert(FAILED)

    assert len(errors) == 2
    assert "refused" in errors[0].lower()
    assert "HTTP 500" in errors[1]
    assert all("secret-token" not in error for error in errors)  # the URL's secret stays out
    assert [r.path for r in receiver.requests] == ["/broken/secret-token", "/ok"]


def test_an_unreachable_webhook_is_an_error_quickly_not_an_exception() -> None:
    notifier = Notifier(NotifyTargets(webhook=(f"http://127.0.0.1:{closed_port()}/",)))
    started = time.monotonic()

    errors = notifier.alert(FAILED)

    assert time.monotonic() - started < 2
    assert len(errors) == 1
    assert errors[0].startswith("webhook http://127.0.0.1:")


def test_a_server_error_is_reported(receiver: Receiver) -> None:
    errors = Notifier(NotifyTargets(webhook=(receiver.url + "/broken",))).alert(FAILED)

    assert len(errors) == 1
    assert "HTTP 500" in errors[0]


def test_only_http_urls_are_opened(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    errors = Notifier(NotifyTargets(webhook=(secret.as_uri(), "nonsense"))).alert(FAILED)

    assert len(errors) == 2
    assert all("not an http or https URL" in error for error in errors)


def test_a_malformed_url_is_an_error_not_an_exception() -> None:
    errors = Notifier(NotifyTargets(webhook=("http://[::1/",))).alert(FAILED)

    assert errors == ["webhook (a malformed URL): ValueError: Invalid IPv6 URL"]


def test_on_filters_the_events_that_alert(receiver: Receiver, smtp_sink: SmtpSink) -> None:
    targets = NotifyTargets(
        webhook=(receiver.url,),
        email=("ops@example.org",),
        smtp=SmtpSettings("127.0.0.1", smtp_sink.port, starttls=False),
        on=("failed",),
    )
    notifier = Notifier(targets)

    assert notifier.alert(Event("degraded", "nightly", "degraded")) == []
    assert notifier.alert(Event("overdue", "nightly", "overdue")) == []
    assert receiver.requests == [] and smtp_sink.mails == []

    assert notifier.alert(FAILED) == []
    assert len(receiver.requests) == 1 and len(smtp_sink.mails) == 1


def test_default_on_alerts_failed_degraded_overdue_only(receiver: Receiver) -> None:
    notifier = Notifier(NotifyTargets(webhook=(receiver.url,)))
    for kind in ("failed", "degraded", "overdue", "success", "start"):
        notifier.alert(Event(kind, "nightly", kind))

    kinds = [json.loads(r.body)["kind"] for r in receiver.requests]
    assert kinds == ["failed", "degraded", "overdue"]


def test_no_targets_nothing_to_do() -> None:
    assert Notifier(NotifyTargets()).alert(FAILED) == []
    assert Notifier(NotifyTargets()).ping("fail") == []


# --- email ----------------------------------------------------------------------------------


def test_email_subject_and_text_body(smtp_sink: SmtpSink) -> None:
    smtp = SmtpSettings("127.0.0.1", smtp_sink.port, starttls=False, sender="ff@backup1")
    targets = NotifyTargets(email=("ops@example.org", "oncall@example.org"), smtp=smtp)

    assert Notifier(targets, host="backup1").alert(FAILED) == []

    [mail] = smtp_sink.mails
    assert mail.sender == "ff@backup1"
    assert mail.recipients == ["ops@example.org", "oncall@example.org"]
    assert mail.auth is None
    message = mail.parsed()
    assert message["Subject"] == "[freezeframe] nightly: FAILED"
    assert message["From"] == "ff@backup1"
    assert message["To"] == "ops@example.org, oncall@example.org"
    assert message.get_content_type() == "text/plain"
    body = message.get_content()
    assert body.startswith("plan nightly: failed: disk full\n")
    assert "host: backup1" in body
    assert "time: 2024-05-01T02:01:00+00:00" in body
    assert "  error: backup: disk full" in body
    assert "  requested: application" in body
    assert "huge" not in body


def test_email_logs_in_with_the_password_file(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    smtp = SmtpSettings(
        "127.0.0.1",
        smtp_sink.port,
        starttls=False,
        username="freezeframe",
        password_file=str(password),
    )
    errors = Notifier(NotifyTargets(email=("ops@example.org",), smtp=smtp)).alert(FAILED)

    assert errors == []
    assert smtp_sink.mails[0].auth == "\0freezeframe\0s3cret"


def test_starttls_required_but_not_offered_sends_nothing(smtp_sink: SmtpSink) -> None:
    smtp = SmtpSettings("127.0.0.1", smtp_sink.port, starttls=True)
    errors = Notifier(NotifyTargets(email=("ops@example.org",), smtp=smtp)).alert(FAILED)

    assert len(errors) == 1
    assert errors[0].startswith("email to ops@example.org: ")
    assert "STARTTLS" in errors[0]
    assert smtp_sink.mails == []


def test_email_without_smtp_settings_is_an_error() -> None:
    errors = Notifier(NotifyTargets(email=("ops@example.org",))).alert(FAILED)

    assert errors == ["email to ops@example.org: no smtp settings in the plans file"]


def test_an_unreachable_mail_server_is_an_error() -> None:
    smtp = SmtpSettings("127.0.0.1", closed_port(), starttls=False)
    started = time.monotonic()
    errors = Notifier(NotifyTargets(email=("ops@example.org",), smtp=smtp)).alert(FAILED)

    assert time.monotonic() - started < 2
    assert len(errors) == 1
    assert "refused" in errors[0].lower()


def test_a_missing_password_file_is_an_error(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    smtp = SmtpSettings(
        "127.0.0.1",
        smtp_sink.port,
        starttls=False,
        username="u",
        password_file=str(tmp_path / "absent"),
    )
    errors = Notifier(NotifyTargets(email=("ops@example.org",), smtp=smtp)).alert(FAILED)

    assert len(errors) == 1
    assert "FileNotFoundError" in errors[0]
    assert smtp_sink.mails == []


# --- pings ----------------------------------------------------------------------------------


def test_pings_start_success_fail(receiver: Receiver) -> None:
    notifier = Notifier(NotifyTargets(ping=receiver.url))

    assert notifier.ping("start") == []
    assert notifier.ping("success") == []
    assert notifier.ping("fail") == []

    assert [(r.method, r.path) for r in receiver.requests] == [
        ("GET", "/start"),
        ("GET", "/"),
        ("GET", "/fail"),
    ]


def test_ping_under_a_base_path_with_a_message(receiver: Receiver) -> None:
    notifier = Notifier(NotifyTargets(ping=receiver.url + "/ping/abc-uuid/"))

    assert notifier.ping("fail", "backup: disk full") == []
    assert notifier.ping("success") == []

    first, second = receiver.requests
    assert (first.method, first.path, first.body) == (
        "POST",
        "/ping/abc-uuid/fail",
        b"backup: disk full",
    )
    assert (second.method, second.path) == ("GET", "/ping/abc-uuid")


def test_a_ping_is_not_filtered_by_on(receiver: Receiver) -> None:
    notifier = Notifier(NotifyTargets(ping=receiver.url, on=()))

    assert notifier.ping("success") == []
    assert len(receiver.requests) == 1


def test_a_failed_ping_is_an_error(receiver: Receiver) -> None:
    dead = Notifier(NotifyTargets(ping=f"http://127.0.0.1:{closed_port()}/uuid"))
    broken = Notifier(NotifyTargets(ping=receiver.url + "/broken/uuid"))

    [refused] = dead.ping("start")
    [server_error] = broken.ping("fail")

    assert refused.startswith("ping start http://127.0.0.1:")
    assert "uuid" not in refused
    assert "HTTP 500" in server_error


def test_a_silent_server_times_out_into_an_error() -> None:
    with socket.socket() as silent:  # listens, so connect succeeds, but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        started = time.monotonic()

        errors = Notifier(NotifyTargets(webhook=(url,)), timeout_s=0.3).alert(FAILED)

    assert time.monotonic() - started < 2
    assert len(errors) == 1
    assert "timed out" in errors[0]
