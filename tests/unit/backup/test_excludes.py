"""Tests for restic-compatible exclude patterns (freezeframe.backup.excludes)."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freezeframe.backup.excludes import ExcludeMatcher
from freezeframe.errors import UsageError


def excluded(patterns: list[str], path: bytes, is_dir: bool = False) -> bool:
    return ExcludeMatcher(patterns).excludes(path, is_dir)


# (pattern, path, expected) -- expectations follow restic's behaviour.
SINGLE = [
    # unanchored: any run of whole components, anywhere
    ("*.tmp", b"/a/b/x.tmp", True),
    ("*.tmp", b"/a/b/x.tmpl", False),
    ("*.go", b"/foo/bar/test.go", True),
    ("*.c", b"/foo/bar/test.go", False),
    ("foo", b"/dir1/foo/dir2/file", True),
    ("foo", b"/dir/foo", True),
    ("foo", b"/dir/foobar", False),
    ("foo", b"/dir/barfoo", False),
    ("cache/*", b"/x/cache/y", True),
    ("cache/*", b"/x/cache", False),
    ("bar/*", b"/foo/bar/baz", True),
    ("baz/*", b"/foo/bar/test.go", False),
    ("bar/test.go", b"/foo/bar/test.go", True),
    ("ba*/*.go", b"/foo/bar/test.go", True),
    ("bb*/*.go", b"/foo/bar/test.go", False),
    ("tesT.*", b"/foo/bar/test.go", False),  # case sensitive
    ("b*ash", b"/bin/bash", True),
    ("b*ash", b"/bin/ash", False),  # "*" never crosses "/"
    ("*", b"/foo", True),
    ("foo/", b"/x/foo", True),  # a trailing "/" is ignored
    ("a/./b", b"/x/a/b", True),
    # anchored at the root
    ("/bin", b"/bin/bash", True),
    ("/bin", b"/usr/bin/restic", False),
    ("/bar*", b"/foo/bar/test.go", False),
    ("/foo/bar", b"/foo/bar", True),
    ("/foo/bar/", b"/foo/bar", True),
    ("/foo///bar", b"/foo/bar", True),
    ("/foo/../bar", b"/bar", True),
    ("/foo/../bar", b"/foo/bar", False),
    ("//foo", b"/foo", True),
    ("/foo/*", b"/foo", False),
    ("/foo/*", b"/foo/baz", True),
    ("/foo/*test.*", b"/foo/bar/test.go", False),
    ("/foo/*/test.*", b"/foo/bar/test.go", True),
    ("/*/*/baz/test.*", b"/foo/bar/baz/test.go", True),
    ("/*/*/bar/test.*", b"/foo/bar/baz/test.go", False),
    ("/", b"/anything/at/all", True),
    # "**": zero or more whole components
    ("foo/**/bar/*.go", b"/home/user/foo/work/special/project/bar/test.go", True),
    ("foo/**/bar/*.go", b"/home/user/foo/bar/test.go", True),
    ("foo/**/bar/*.go", b"/foo/bar/baz/bar/test.go", True),
    ("foo/**/bar/*.go", b"/home/user/foo/test.c", False),
    ("foo/**/bar/*.go", b"/bar/foo/main.go", False),
    ("foo/**/bar", b"/home/user/foo/x/y/bar/main.go", True),
    ("foo/**/bar/**/x", b"/home/user/foo/blaaa/blaz/bar/shared/work/x", True),
    ("user/**/important*", b"/home/user/work/x/y/hidden/x", False),
    ("/home/user/repos/**/target", b"/home/user/repos/r2/p1/target", True),
    ("/home/user/repos/**/target", b"/home/user/repos/target", True),
    ("/home/user/repos/**/target", b"/home/other/repos/r1/target", False),
    ("**", b"/foo/bar/test.go", True),
    ("**/x.tmp", b"/a/b/x.tmp", True),
    ("**/x.tmp", b"/x.tmp", True),
    ("/**/x.tmp", b"/a/x.tmp", True),
    ("/**", b"/a", True),
    ("/foo/**", b"/foo", True),  # restic: a trailing "**" may match nothing
    ("/foo/**", b"/foo/a/b", True),
    ("/foo/**", b"/foobar", False),
    # several "**" each may match nothing (restic itself misses these; see its PR #21948)
    ("/srv/**/data/**/*.key", b"/srv/app/data/secret.key", True),
    ("/home/**/cache/**", b"/home/user/cache", True),
    ("/a/**/**", b"/a", True),
    ("/**/x/**/y", b"/p/q/x/y", True),
    ("a**b", b"/x/aXYb", True),  # "**" inside a component is just "*"
    ("a**b", b"/x/aX/Yb", False),
    # ? and character classes, Go filepath.Match style
    ("?", b"/foo/bar/test.go", False),
    ("?", b"/foo/x/test.go", True),
    ("/home/[uU]ser/?.go", b"/home/User/F.go", True),
    ("/home/[uU]ser/?.go", b"/home/user/FF.go", False),
    ("[a-c]x", b"/d/bx", True),
    ("[a-c]x", b"/d/dx", False),
    ("[^a-c]x", b"/d/dx", True),
    ("[^a-c]x", b"/d/bx", False),
    ("[!a]x", b"/d/!x", True),  # Go negates with "^" only; "!" is literal
    ("[!a]x", b"/d/bx", False),
    ("[\\]]", b"/d/]", True),
    ("[\\-]", b"/d/-", True),
    ("[!-0]", b"/a/b", False),  # a range spanning "/" must not join components
    ("[!-0]", b"/a/.", True),
    ("[^x]", b"/a/b", True),
    ("a[^x]b", b"/a/b", False),
    ("\\*", b"/d/*", True),
    ("\\*", b"/d/x", False),
    ("x\\?", b"/d/x?", True),
    ("]", b"/d/]", True),
    ("\\!keep", b"/d/!keep", True),  # escaped "!" is a literal, not a negation
    # non-ASCII: "?" is one character, not one byte
    ("?.txt", "/d/é.txt".encode(), True),
    ("[é]", "/d/é".encode(), True),
    ("[à-ü]", "/d/é".encode(), True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), SINGLE)
def test_single_pattern(pattern: str, path: bytes, expected: bool) -> None:
    assert excluded([pattern], path) is expected
    assert excluded([pattern], path, is_dir=True) is expected  # kind never matters


# (patterns, path, expected): "!" re-includes; the last matching pattern wins.
LISTS = [
    (["*.go", "*.c"], b"/foo/bar/test.go", True),
    (["", "*.c"], b"/foo/bar/test.go", False),
    (["!**", "*.go"], b"/foo/bar/test.go", True),
    (["*.go", "!**"], b"/foo/bar/test.go", False),
    (["/foo/*/test.*", "!*.c"], b"/foo/bar/test.c", False),
    (["/foo/*/test.*", "!*.c"], b"/foo/bar/test.go", True),
    (["/foo/*/*", "!test.*", "*.c"], b"/foo/bar/test.go", False),
    (["/foo/*/*", "!test.*", "*.c"], b"/foo/bar/test.c", True),
    (["/foo/*/*", "!test.*", "*.c"], b"/foo/bar/file.go", True),
    (["/**/*", "!/foo", "/foo/*", "!/foo/bar"], b"/foo/other/test.go", True),
    (["/**/*", "!/foo", "/foo/*", "!/foo/bar"], b"/foo/bar", False),
    (["/**/*", "!/foo", "/foo/*", "!/foo/bar"], b"/foo/bar/test.go", False),
    (["/**/*", "!/foo", "/foo/*", "!/foo/bar", "/foo/bar/test*"], b"/foo/bar/test.go/c", True),
    # restic's documented "keep only some of $HOME" recipe
    (["/home/u/*", "!/home/u/Documents", "*~"], b"/home/u", False),
    (["/home/u/*", "!/home/u/Documents", "*~"], b"/home/u/Documents/a.txt", False),
    (["/home/u/*", "!/home/u/Documents", "*~"], b"/home/u/Documents/a.txt~", True),
    (["/home/u/*", "!/home/u/Documents", "*~"], b"/home/u/Music/a.mp3", True),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), LISTS)
def test_pattern_lists(patterns: list[str], path: bytes, expected: bool) -> None:
    assert excluded(patterns, path) is expected


def test_excluded_directory_cannot_be_reincluded_below() -> None:
    # "/data/cache" is excluded; like restic (which never descends into it), a later "!"
    # pattern matching only the child does not bring the child back.
    m = ExcludeMatcher(["cache", "!cache/keep.txt"])
    assert m.excludes(b"/data/cache", True)
    assert m.excludes(b"/data/cache/keep.txt", False)
    assert m.excludes(b"/data/cache/sub/keep.txt", False)
    # ...but a "!" that matches the directory itself does.
    m = ExcludeMatcher(["cache", "!/data/cache"])
    assert not m.excludes(b"/data/cache", True)
    assert not m.excludes(b"/data/cache/keep.txt", False)
    assert m.excludes(b"/other/cache", True)


def test_directory_match_covers_whole_subtree() -> None:
    m = ExcludeMatcher(["node_modules", "/var/tmp"])
    assert m.excludes(b"/src/app/node_modules", True)
    assert m.excludes(b"/src/app/node_modules/x/y/z.js", False)
    assert m.excludes(b"/var/tmp/a/b", False)
    assert not m.excludes(b"/var/tmpfoo/a", False)


def test_invalid_utf8_path_bytes() -> None:
    path = b"/data/caf\xe9/r\xff\xfe.tmp"
    assert excluded(["*.tmp"], path)
    assert excluded(["caf?"], path)  # "?" matches one undecodable byte
    assert excluded(["/data/caf[^x]"], path)
    assert not excluded(["caf??"], path)
    # A pattern from argv holding the same bytes (surrogateescape) matches them exactly.
    assert excluded([b"caf\xe9".decode("utf-8", "surrogateescape")], path)
    assert not excluded(["café"], path)  # the UTF-8 spelling is different bytes
    assert excluded(["café"], "/data/café".encode())


@pytest.mark.parametrize(
    "pattern",
    ["[", "a[b", "[]", "[]a]", "[^]", "[a-]", "[-a]", "*[._]log[.-][0-9]", "x\\", "[z-a]", "!"],
)
def test_invalid_pattern_is_a_usage_error(pattern: str) -> None:
    with pytest.raises(UsageError, match="invalid exclude pattern") as info:
        ExcludeMatcher(["ok", pattern])
    assert repr(pattern) in str(info.value)


def test_bool_and_empty() -> None:
    assert not ExcludeMatcher([])
    assert not ExcludeMatcher(["", ""])
    assert not ExcludeMatcher(["!foo"])  # nothing to cancel: can never exclude
    assert ExcludeMatcher(["foo"])
    assert not ExcludeMatcher([]).excludes(b"/foo", False)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="absolute"):
        ExcludeMatcher(["foo"]).excludes(b"foo/bar", False)
    with pytest.raises(TypeError):
        ExcludeMatcher("foo")


# --- differential test against a direct port of restic's component-window algorithm ---


def _ref_match(pat: list[str], strs: list[str]) -> bool:
    if "**" in pat:
        pos = pat.index("**")
        return any(
            _ref_match(pat[:pos] + ["*"] * i + pat[pos + 1 :], strs)
            # restic bounds this by len(pat), wrongly counting later "**" as one component each
            # (restic PR #21948); we follow the documented "zero or more" meaning instead.
            for i in range(len(strs) - len(pat) + 2 + pat.count("**") - 1)
        )
    if not pat:
        return not strs
    if len(pat) > len(strs):
        return False
    lo, hi = (0, 0) if pat[0] == "/" else (1, len(strs) - len(pat))
    return any(
        all(
            fnmatch.fnmatchcase(s, p.replace("[^", "[!"))
            for p, s in zip(pat, strs[off:], strict=False)
        )
        for off in range(lo, hi + 1)
    )


def _ref_excluded(patterns: list[str], path: str) -> bool:
    comps = path.split("/")[1:]
    for depth in range(1, len(comps) + 1):  # an excluded ancestor excludes the subtree
        matched = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            parts = pattern.lstrip("!").split("/")
            parts = ["/", *parts[1:]] if parts[0] == "" else parts
            m = _ref_match(parts, ["/", *comps[:depth]])
            matched = (matched and not m) if negated else (matched or m)
        if matched:
            return True
    return False


_component = st.sampled_from(["a", "b", "*", "**", "?", "[ab]", "a*", "[^a]"])
_pattern = st.builds(
    lambda neg, anchored, parts: ("!" if neg else "") + ("/" if anchored else "") + "/".join(parts),
    st.booleans(),
    st.booleans(),
    st.lists(_component, min_size=1, max_size=4),
)
_path = st.lists(st.sampled_from(["a", "b", "ab", "ba", "c"]), min_size=1, max_size=6).map(
    lambda comps: "/" + "/".join(comps)
)


@given(st.lists(_pattern, min_size=1, max_size=3), _path)
def test_matches_restic_algorithm(patterns: list[str], path: str) -> None:
    assert excluded(patterns, path.encode()) is _ref_excluded(patterns, path)
