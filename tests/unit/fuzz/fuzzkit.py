"""Mutators and bookkeeping for the parser fuzz tests (``test_fuzz_parsers.py``, ``bench/fuzz.py``).

Every input starts from a real object made by the project's own encoders and is then damaged:
bytes flipped, runs inserted, deleted, duplicated, truncated, two objects spliced; JSON and TOML
documents are also damaged structurally (a value of another type, a dropped or unknown key, huge
and negative numbers, NaN, deep nesting, text that is not UTF-8), because byte flips alone
rarely get past a JSON parser.

``exercise`` runs one parser on one input and tallies the outcome per parser. An exception that
is not a documented error fails the test; its signature (exception type and the innermost
freezeframe function) groups the failures of one defect.

Environment: ``FREEZEFRAME_FUZZ_EXAMPLES`` (examples per test), ``FREEZEFRAME_FUZZ_COLLECT=1``
(record failures and go on, for the bench), ``FREEZEFRAME_FUZZ_REPORT`` (write the tally there
as JSON at the end of the session), ``FREEZEFRAME_FUZZ_CALL_BUDGET_S`` (a call that takes longer
counts as a hang).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from freezeframe.errors import FreezeframeError

T = TypeVar("T")

EXAMPLES = int(os.environ.get("FREEZEFRAME_FUZZ_EXAMPLES", "500"))
COLLECT = os.environ.get("FREEZEFRAME_FUZZ_COLLECT") == "1"
REPORT = os.environ.get("FREEZEFRAME_FUZZ_REPORT", "")
CALL_BUDGET_S = float(os.environ.get("FREEZEFRAME_FUZZ_CALL_BUDGET_S", "5"))

# Hypothesis: no example database (runs stay independent), no deadline (the call budget below
# catches hangs), random seeds (each CI run explores new inputs).
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


F = TypeVar("F", bound=Callable[..., None])


def fuzz(test: F) -> F:
    """A fuzz test: the settings above, and the ``fuzz`` mark (``bench/fuzz.py`` selects by it)."""
    return cast(F, pytest.mark.fuzz(FUZZ(test)))


# ---------------------------------------------------------------------------------------------
# Bookkeeping


class Hang(Exception):
    """A parser call that ran past ``CALL_BUDGET_S``."""


@dataclass
class Failure:
    """One signature of undocumented exception: how often, and the first input that raised it."""

    count: int
    exception: str
    sample: str


@dataclass
class Tally:
    """The outcomes of one parser's executions."""

    executions: int = 0
    accepted: int = 0
    rejected: int = 0  # a documented error
    skipped: int = 0  # not run to the end (an input whose cost would be the point)
    failures: dict[str, Failure] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "executions": self.executions,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "failures": {
                sig: {"count": f.count, "exception": f.exception, "sample": f.sample}
                for sig, f in self.failures.items()
            },
        }


TALLY: dict[str, Tally] = {}


def tally(parser: str) -> Tally:
    return TALLY.setdefault(parser, Tally())


def signature(exc: BaseException) -> str:
    """``Type in path/of/module.py:function`` of the innermost freezeframe frame: stable across
    inputs that hit the same defect, different for different defects."""
    where = "outside freezeframe"
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = Path(frame.filename).parts
        if "freezeframe" in parts and "tests" not in parts:
            inner = parts[len(parts) - 1 - parts[::-1].index("freezeframe") + 1 :]
            where = f"{'/'.join(inner)}:{frame.name}"
    return f"{type(exc).__name__} in {where}"


@contextlib.contextmanager
def call_budget(seconds: float = CALL_BUDGET_S) -> Iterator[None]:
    """Raise Hang in the call if it runs longer than ``seconds`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _show(sample: object, limit: int = 300) -> str:
    text = repr(sample)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def exercise(
    parser: str,
    call: Callable[[], T],
    sample: object,
    documented: tuple[type[BaseException], ...] = (FreezeframeError,),
    check: Callable[[BaseException], None] | None = None,
) -> T | None:
    """Run ``call``; a documented error (checked by ``check``) or a result is fine, anything
    else is recorded and raised (unless collecting)."""
    record = tally(parser)
    record.executions += 1
    try:
        with call_budget():
            result = call()
    except documented as exc:
        if check is not None:
            check(exc)
        record.rejected += 1
        return None
    except Exception as exc:
        sig = signature(exc)
        failure = record.failures.get(sig)
        if failure is None:
            record.failures[sig] = Failure(1, f"{type(exc).__name__}: {exc}"[:300], _show(sample))
        else:
            failure.count += 1
        if COLLECT:
            return None
        raise
    record.accepted += 1
    return result


def one_line(exc: BaseException) -> None:
    """Errors shown to users are one line."""
    assert "\n" not in str(exc) and str(exc).strip(), f"not a one-line message: {str(exc)!r}"


def write_report(path: str) -> None:
    Path(path).write_text(
        json.dumps({name: t.to_json() for name, t in sorted(TALLY.items())}, indent=1) + "\n"
    )


# ---------------------------------------------------------------------------------------------
# Byte mutations

_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
_U32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF)
_RUNS = (b"\x00", b"\xff", b"\x00" * 4, b"\xff" * 4, b"\xff\xfe", b"\xc3", b"\xed\xb3\xbf", b"{")


def _offset(draw: st.DrawFn, data: bytearray, end: bool = False) -> int:
    return draw(st.integers(0, len(data) if end else max(len(data) - 1, 0)))


def _flip(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if data:
        data[_offset(draw, data)] ^= 1 << draw(st.integers(0, 7))
    return data


def _set_byte(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if data:
        value = draw(st.sampled_from(_BYTES) | st.integers(0, 255))
        data[_offset(draw, data)] = value
    return data


def _set_u32(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if len(data) >= 4:
        at = draw(st.integers(0, len(data) - 4))
        value = draw(st.sampled_from(_U32) | st.integers(0, 2**32 - 1))
        data[at : at + 4] = value.to_bytes(4, draw(st.sampled_from(("little", "big"))))
    return data


def _insert(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    at = _offset(draw, data, end=True)
    data[at:at] = draw(st.sampled_from(_RUNS) | st.binary(min_size=1, max_size=32))
    return data


def _delete(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if data:
        at = _offset(draw, data)
        del data[at : at + draw(st.integers(1, 64))]
    return data


def _duplicate(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if data:
        at = _offset(draw, data)
        run = data[at : at + draw(st.integers(1, 128))]
        to = _offset(draw, data, end=True)
        data[to:to] = run * draw(st.integers(1, 4))
    return data


def _truncate(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    return data[: _offset(draw, data)]


def _splice(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    other = draw(st.sampled_from(seeds))
    return data[: _offset(draw, data, end=True)] + other[draw(st.integers(0, len(other))) :]


def _append(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    return data + draw(st.binary(min_size=1, max_size=64))


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HUGE_SIZES = (2**31 + 1, 2**40, 2**62, 2**64 - 2)


def declare_content_size(data: bytes, size: int) -> bytes:
    """The first zstd frame in ``data`` with its header declaring ``size`` bytes of content
    (an 8-byte size field); ``data`` unchanged when it holds no frame."""
    out = bytearray(data)
    at = out.find(ZSTD_MAGIC)
    if at < 0 or len(out) < at + 6:
        return data
    descriptor = out[at + 4]
    single_segment = bool(descriptor & 0x20)
    size_field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = at + 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    out[at + 4] = descriptor | 0xC0
    out[start : start + size_field] = size.to_bytes(8, "little")
    return bytes(out)


def _zstd_size(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    """A zstd frame header declaring a huge content size; a bit flip when there is no frame."""
    if data.find(ZSTD_MAGIC) < 0:
        return _flip(draw, data, seeds)
    return bytearray(declare_content_size(bytes(data), draw(st.sampled_from(_HUGE_SIZES))))


_BYTE_OPS = (
    _zstd_size,
    _flip,
    _set_byte,
    _set_u32,
    _insert,
    _delete,
    _duplicate,
    _truncate,
    _splice,
    _append,
)


def damage(draw: st.DrawFn, data: bytes, seeds: Sequence[bytes], max_ops: int = 4) -> bytes:
    """1..max_ops byte mutations of ``data``."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        out = draw(st.sampled_from(_BYTE_OPS))(draw, out, seeds)
    return bytes(out)


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: Sequence[bytes], max_ops: int = 4) -> bytes:
    """A seed damaged at the byte level."""
    return damage(draw, draw(st.sampled_from(seeds)), seeds, max_ops)


# ---------------------------------------------------------------------------------------------
# JSON mutations

DEEP = "__fuzz_deep__"  # replaced in the text by thousands of nested arrays or objects
BIGNUM = "__fuzz_bignum__"  # replaced by a number too long for int() or float()
_NASTY: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**32,
    2**53 + 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**100,
    0.5,
    -0.0,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "x",
    "0" * 64,
    "g" * 64,
    "\udcff",
    "\x00",
    "é",
    "/",
    "AAAA",
    "1970-01-01",
    "9999-12-31T23:59:59+14:00",
    [],
    {},
    [None],
    [[1, 2]],
    {"": None},
    DEEP,
    BIGNUM,
)


def _tweak(draw: st.DrawFn, value: Any) -> Any:
    """A value near the original one, often of another type."""
    if isinstance(value, bool):
        return draw(st.sampled_from((not value, int(value), str(value).lower())))
    if isinstance(value, int):
        near_float = float(value) if abs(value) < 2**1000 else math.inf
        return draw(
            st.sampled_from(
                (value + 1, value - 1, -value, value * 2**32, near_float, str(value), 1 << 64)
            )
        )
    if isinstance(value, float):
        near_int = int(value) if math.isfinite(value) else 0
        return draw(st.sampled_from((-value, value * 1e300, near_int, str(value), math.nan)))
    if isinstance(value, str):
        return draw(
            st.sampled_from(
                (value[:-1], value + "x", value[1:], value * 50, value.upper(), [value], value[:3])
            )
        )
    if isinstance(value, list):
        return draw(st.sampled_from((value[:1], value * 3, value[::-1], [value], {"0": value})))
    if isinstance(value, dict):
        return draw(st.sampled_from((list(value), list(value.values()), [value], {})))
    return value


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every value in ``doc``; (None, None) stands for the root."""
    slots: list[tuple[Any, Any]] = [(None, None)]
    stack = [doc]
    while stack:
        node = stack.pop()
        items = (
            list(node.items())
            if isinstance(node, dict)
            else list(enumerate(node))
            if isinstance(node, list)
            else []
        )
        for key, value in items:
            slots.append((node, key))
            if isinstance(value, dict | list):
                stack.append(value)
    return slots


def _new_value(draw: st.DrawFn, old: Any) -> Any:
    kind = draw(st.integers(0, 5))
    if kind <= 1:  # a copy: later mutations must not change the pool (nor the next example)
        return copy.deepcopy(draw(st.sampled_from(_NASTY)))
    if kind == 2:
        return copy.deepcopy(_tweak(draw, old))
    if kind == 3:
        return draw(st.integers())
    if kind == 4:
        return draw(st.floats())
    return draw(st.text(max_size=12))


def mutate_document(draw: st.DrawFn, doc: Any, max_ops: int = 3) -> Any:
    """1..max_ops structural changes of a parsed JSON/TOML document (a deep copy)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_ops))):
        slots = _slots(doc)
        parent, key = slots[draw(st.integers(0, len(slots) - 1))]
        old = doc if parent is None else parent[key]
        op = draw(
            st.sampled_from(("replace", "replace", "delete", "add", "rename", "wrap", "deep"))
        )
        if op == "deep":  # thousands of nested arrays or objects in place of the value
            if parent is None:
                doc = DEEP
            else:
                parent[key] = DEEP
        elif op == "replace" or (parent is None and op != "wrap"):
            new = _new_value(draw, old)
            if parent is None:
                doc = new
            else:
                parent[key] = new
        elif op == "wrap":
            wrapped = draw(st.sampled_from(("list", "dict")))
            new = [old] if wrapped == "list" else {"value": old}
            if parent is None:
                doc = new
            else:
                parent[key] = new
        elif op == "delete":
            del parent[key]
        elif op == "add":
            if isinstance(parent, dict):
                parent[draw(st.sampled_from(("extra", "", "0", str(key) + "_")))] = _new_value(
                    draw, old
                )
            else:
                parent.insert(key, copy.deepcopy(old))
        elif isinstance(parent, dict):  # rename
            parent[draw(st.sampled_from((str(key).upper(), str(key) + "_b64", "_" + str(key))))] = (
                parent.pop(key)
            )
    return doc


def _deep(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from((50, 400, 999, 1001, 5000, 100_000)))
    if draw(st.booleans()):
        return "[" * depth + "0" + "]" * depth
    return '{"a":' * depth + "0" + "}" * depth


def _bignum(draw: st.DrawFn) -> str:
    return draw(
        st.sampled_from(("9" * 5000, "1e400", "-1e400", "1" + "0" * 400, "0." + "1" * 5000))
    )


def to_json_bytes(draw: st.DrawFn, doc: Any) -> bytes:
    """``doc`` as JSON text, the sentinels expanded, sometimes with non-UTF-8 surrogates."""
    text = json.dumps(doc, allow_nan=True, ensure_ascii=draw(st.booleans()))
    if DEEP in text:
        text = text.replace(f'"{DEEP}"', _deep(draw))
    if BIGNUM in text:
        text = text.replace(f'"{BIGNUM}"', _bignum(draw))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated_json(draw: st.DrawFn, seeds: Sequence[Any]) -> bytes:
    """A real JSON document damaged structurally, and sometimes at the byte level too."""
    doc = mutate_document(draw, draw(st.sampled_from(seeds)))
    data = to_json_bytes(draw, doc)
    if draw(st.integers(0, 4)) == 0:
        raw = [json.dumps(s).encode() for s in seeds]
        data = damage(draw, data, raw, max_ops=2)
    return data


def json_inputs(seeds: Sequence[Any]) -> st.SearchStrategy[bytes]:
    """Structural mutations mostly, plain byte mutations of the serialized seeds as well."""
    raw = [json.dumps(s, indent=1).encode() for s in seeds]
    return st.one_of(mutated_json(seeds), mutated_json(seeds), mutated_bytes(raw))


@st.composite
def mutated_documents(draw: st.DrawFn, seeds: Sequence[Any]) -> Any:
    """A parsed document, damaged structurally (for parsers that take one, not bytes)."""
    return mutate_document(draw, draw(st.sampled_from(seeds)))


# ---------------------------------------------------------------------------------------------
# TOML


def _toml_key(key: object) -> str:
    return json.dumps(str(key))


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'  # TOML has no null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if value == DEEP:
            return "[" * 2000 + "1" + "]" * 2000
        if value == BIGNUM:
            return "9" * 5000
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def to_toml(doc: Any) -> str:
    """A document as TOML: tables as [headers], the rest inline (enough for mutated documents;
    a root that is not a table comes out as one key, which the loaders must reject)."""
    if not isinstance(doc, dict):
        return f"value = {_toml_value(doc)}\n"
    lines: list[str] = []

    def table(prefix: list[str], items: dict[str, Any]) -> None:
        if prefix:
            lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
        for key, value in items.items():
            if not isinstance(value, dict):
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in items.items():
            if isinstance(value, dict):
                table([*prefix, str(key)], value)

    table([], doc)
    return "\n".join(lines) + "\n"


_TOML_LITERALS = (
    '""',
    '"relative/path"',
    "[]",
    "{}",
    "[1, 2]",
    "nan",
    "inf",
    "-1",
    "0",
    "9" * 5000,
    "1" + "0" * 400,
    "1979-05-27T07:32:00Z",
    "1979-05-27",
    "07:32:00",
    "true",
    '"0 25 * * *"',
    '"*/0 * * * *"',
    '"0 0 31 2 *"',
    '"@reboot"',
    '"Mars/Olympus"',
    '"../../etc/passwd"',
    "[" * 600 + "]" * 600,
    '"\\u0000"',
    "'''\n'''",
)


@st.composite
def mutated_toml(draw: st.DrawFn, seeds: Sequence[str]) -> bytes:
    """A real TOML file damaged by line edits, structural edits of its document, or bytes."""
    import tomllib

    text = draw(st.sampled_from(seeds))
    how = draw(st.sampled_from(("lines", "lines", "document", "document", "bytes")))
    if how == "document":
        doc = mutate_document(draw, tomllib.loads(text))
        text = to_toml(doc)
    elif how == "lines":
        lines = text.splitlines()
        for _ in range(draw(st.integers(1, 3))):
            if not lines:
                break
            at = draw(st.integers(0, len(lines) - 1))
            op = draw(st.sampled_from(("value", "value", "delete", "duplicate", "swap", "key")))
            line = lines[at]
            if op == "value" and "=" in line:
                key = line.split("=", 1)[0]
                lines[at] = f"{key}= {draw(st.sampled_from(_TOML_LITERALS))}"
            elif op == "delete":
                del lines[at]
            elif op == "duplicate":
                lines.insert(at, line)
            elif op == "swap":
                other = draw(st.integers(0, len(lines) - 1))
                lines[at], lines[other] = lines[other], lines[at]
            elif op == "key" and "=" in line:
                lines[at] = draw(st.sampled_from(("x", "[x]", "[[plans]]", ""))) + line
        text = "\n".join(lines) + "\n"
    data = text.encode("utf-8", "surrogatepass")
    if how == "bytes":
        data = damage(draw, data, [s.encode() for s in seeds])
    return data
