"""Restic-compatible ``--exclude`` patterns, pre-compiled to regexes.

Semantics (those of restic's ``internal/filter``, reimplemented):

* A pattern is cleaned like Go's ``filepath.Clean`` (``//`` and ``.`` collapse, ``..`` is
  resolved, a trailing ``/`` is dropped), then split into path components. Each component uses
  Go ``filepath.Match`` syntax: ``*``, ``?``, ``[a-z]``, ``[^a-z]``, ``\\x`` escapes. A
  component that is exactly ``**`` matches zero or more whole components. (Restic's matcher
  misses some paths when a pattern has several ``**``, e.g. ``/a/**/b/**`` vs ``/a/x/b``;
  restic PR #21948 calls that a bug, so the documented meaning is implemented here.)
* A pattern starting with ``/`` must match from the root; any other pattern may match anywhere.
  Either way it only has to match *some leading part* of the path, so a pattern that matches a
  directory also matches everything below it (``foo`` matches ``/a/foo/b``, ``cache/*``
  matches ``/x/cache/y/z``).
* A leading ``!`` negates: the path is excluded when the *last* pattern that matches it is not
  negated. Like restic (and gitignore), nothing below an excluded directory can be re-included.
* Matching is case sensitive and never depends on whether the path is a directory.

Paths are ``bytes`` (what the walker has). They are decoded as UTF-8 with ``surrogateescape``
so that ``?`` and classes work per character like Go, while invalid bytes still round-trip: a
pattern string containing surrogates (as Python makes from such bytes in ``argv``) matches them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

from freezeframe.errors import UsageError

__all__ = ["ExcludeMatcher"]

_STAR = "[^/]*"
_ANY_DIRS = "(?:/[^/]*)*"  # a ``**`` component: zero or more "/component"
_END = r"(?=/|\Z)"  # the match must end on a component boundary
_DIR_CACHE_SIZE = 8192


def _bad(pattern: str, reason: str) -> UsageError:
    return UsageError(f"invalid exclude pattern {pattern!r}: {reason}")


def _class_char(part: str, i: int, pattern: str) -> tuple[str, int]:
    """One (possibly escaped) class character at ``part[i]``; mirrors Go's ``getEsc``."""
    if i >= len(part) or part[i] in "-]":
        raise _bad(pattern, "malformed character class")
    if part[i] == "\\":
        i += 1
        if i >= len(part):
            raise _bad(pattern, "unterminated character class")
    if i + 1 >= len(part):
        raise _bad(pattern, "unterminated character class")
    return part[i], i + 1


def _translate_class(part: str, i: int, pattern: str) -> tuple[str, int]:
    """Translate the class whose ``[`` precedes ``part[i]``; return (regex, index after ``]``)."""
    negated = i < len(part) and part[i] == "^"
    if negated:
        i += 1
    items: list[str] = []
    covers_slash = False
    while not (i < len(part) and part[i] == "]" and items):
        lo, i = _class_char(part, i, pattern)
        hi = lo
        if part[i] == "-":
            hi, i = _class_char(part, i + 1, pattern)
        if lo > hi:
            raise _bad(pattern, f"reversed range {lo}-{hi} in character class")
        covers_slash = covers_slash or lo <= "/" <= hi
        items.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    body = "".join(items)
    # A class must never match the separator, or it could span two components.
    if negated:
        return f"[^/{body}]", i + 1
    return (f"(?!/)[{body}]" if covers_slash else f"[{body}]"), i + 1


def _translate_component(part: str, pattern: str) -> str:
    """Translate one ``filepath.Match`` component (no ``/`` in it) to a regex."""
    out: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        i += 1
        if c == "*":
            if not out or out[-1] != _STAR:  # "a**b" == "a*b"; avoids needless backtracking
                out.append(_STAR)
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            frag, i = _translate_class(part, i, pattern)
            out.append(frag)
        elif c == "\\":
            if i >= len(part):
                raise _bad(pattern, "trailing backslash")
            out.append(re.escape(part[i]))
            i += 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _translate(pattern: str) -> tuple[bool, bool, str]:
    """Return (negated, anchored, regex); the regex starts matching at a ``/``."""
    negated = pattern.startswith("!")
    body = pattern[1:] if negated else pattern
    if not body:
        raise _bad(pattern, "nothing follows '!'")
    cleaned = posixpath.normpath(body)
    if cleaned.startswith("//"):  # POSIX normpath keeps exactly two leading slashes; Go doesn't
        cleaned = cleaned[1:]
    anchored = cleaned.startswith("/")
    parts: list[str] = []
    for part in cleaned.split("/"):
        if part and not (part == "**" and parts and parts[-1] == "**"):
            parts.append(part)
    # A trailing "**" can match zero components, and an unanchored pattern already floats, so
    # dropping "**" there is equivalent and keeps the regex linear.
    if parts and parts[-1] == "**":
        parts.pop()
    if not anchored and parts and parts[0] == "**":
        parts.pop(0)
    if not anchored and not parts:  # "**": any one component, i.e. every path
        parts = ["*"]
    regex = "".join(
        _ANY_DIRS if p == "**" else "/" + _translate_component(p, pattern) for p in parts
    )
    return negated, anchored, regex + _END


def _alternation(regexes: list[str], prefix: str = "") -> re.Pattern[str] | None:
    return re.compile(prefix + "(?:" + "|".join(regexes) + ")") if regexes else None


class ExcludeMatcher:
    """Decides, once per walked path, whether restic-style exclude patterns drop it."""

    def __init__(self, patterns: Sequence[str]) -> None:
        """Compile ``patterns`` (empty strings are ignored, as in restic).

        Raises ``UsageError`` naming the first invalid pattern.
        """
        if isinstance(patterns, str):
            raise TypeError("patterns must be a sequence of strings, not a single string")
        rules = [_translate(p) for p in patterns if p]
        # Negations before the first positive pattern can never change the outcome.
        while rules and rules[0][0]:
            rules.pop(0)
        # Consecutive rules of the same polarity are merged: per group, one ``match`` for the
        # anchored patterns and one ``search`` for the others, with their common leading "/"
        # factored out so the regex engine can skip to candidate positions quickly.
        groups: list[tuple[bool, list[str], list[str]]] = []
        for negated, anchored, regex in rules:
            if not groups or groups[-1][0] != negated:
                groups.append((negated, [], []))
            if anchored:
                groups[-1][1].append(regex)
            else:
                groups[-1][2].append(regex[1:])
        # Stored last-first: the last group that matches decides.
        self._groups = tuple(
            (negated, _alternation(anchored), _alternation(floating, "/"))
            for negated, anchored, floating in reversed(groups)
        )
        self._has_negation = len(self._groups) > 1
        # Subtree verdicts of directories; walkers visit siblings together, so mostly hits.
        self._dir_cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        """False when no pattern can ever exclude anything, so the walker can skip the calls."""
        return bool(self._groups)

    def _matches(self, path: str) -> bool:
        for negated, anchored, floating in self._groups:
            if (anchored and anchored.match(path)) or (floating and floating.search(path)):
                return not negated
        return False

    def _dir_excluded(self, path: str) -> bool:
        """Whether directory ``path`` or any ancestor is excluded (cached; no recursion)."""
        cache = self._dir_cache
        verdict = False
        missing: list[str] = []
        cur = path
        while cur:  # climb to the nearest ancestor with a known verdict
            known = cache.get(cur)
            if known is not None:
                verdict = known
                break
            missing.append(cur)
            cur = cur[: cur.rfind("/")]
        if len(cache) + len(missing) > _DIR_CACHE_SIZE:
            cache.clear()
        for directory in reversed(missing):
            verdict = verdict or self._matches(directory)
            cache[directory] = verdict
        return verdict

    def excludes(self, path: bytes, is_dir: bool) -> bool:
        """Whether the absolute ``path`` is excluded.

        ``is_dir`` is accepted for the walker's convenience but, as in restic, does not change
        the verdict. ``path`` must be absolute and normalized (no ``.``, ``..`` or ``//``).
        """
        if not self._groups:
            return False
        if not path.startswith(b"/"):
            raise ValueError(f"exclude patterns need an absolute path, got {path!r}")
        text = path.decode("utf-8", "surrogateescape")
        if self._has_negation:
            # With "!" patterns a child can match differently from its parent; restic never
            # descends into an excluded directory, so an excluded ancestor wins.
            parent = text[: text.rfind("/")]
            if parent and self._dir_excluded(parent):
                return True
        return self._matches(text)
