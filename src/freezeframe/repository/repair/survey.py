"""What the repository holds, pack by pack, from every source that can tell: the index files
that still read, and the pack headers for packs no readable index describes soundly.

Both repairs start here: ``repair index`` writes what the survey found as the new index, and
``repair packs`` takes the blob boundaries of damaged packs from it. Only damage (an object that
fails authentication or does not parse) is tolerated; a storage error stops the survey, since
leaving a pack out because a read timed out would lose its blobs from the index.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from freezeframe.errors import IntegrityError, NotFound
from freezeframe.repository.crypto import content_name
from freezeframe.repository.index import decode_index
from freezeframe.repository.pack import PackEntry, read_header, stored_header_size
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import Kind

Progress = Callable[[str, int, int], None]

WORKERS = 4


@dataclass
class PackSurvey:
    index_files: list[str] = field(default_factory=list)
    """Every index file present when the survey started (the ones a repair replaces)."""
    damaged_index_files: dict[str, str] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    """Every stored pack with its size."""
    packs: dict[str, dict[bytes, PackEntry]] = field(default_factory=dict)
    """Stored packs whose blobs are known, with them."""
    headers_read: int = 0
    missing: list[str] = field(default_factory=list)
    """Packs an index names that storage lacks: their blobs are gone."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Stored packs whose header cannot be read and that no index describes: lost."""
    kept_from_index: dict[str, str] = field(default_factory=dict)
    """Stored packs whose header cannot be read, described by an index file instead."""

    def entries(self) -> dict[str, list[PackEntry]]:
        return {
            pack: sorted(blobs.values(), key=lambda e: e.offset)
            for pack, blobs in self.packs.items()
        }


def survey_packs(repo: Repository, *, read_all_headers: bool, progress: Progress) -> PackSurvey:
    """Index files first; then the header of every stored pack that no readable index file
    names, or whose index entries do not tile it (all packs with ``read_all_headers``)."""
    survey = PackSurvey(index_files=sorted(repo.list_names(Kind.INDEX)))
    indexed = _read_index_files(repo, survey, progress)
    survey.stored = {info.name: info.size for info in repo.storage.list(Kind.DATA)}
    survey.missing = sorted(set(indexed) - set(survey.stored))
    to_read = []
    for pack, size in sorted(survey.stored.items()):
        entries = indexed.get(pack)
        if entries and not read_all_headers and _tiles(entries, size):
            survey.packs[pack] = entries
        else:
            to_read.append(pack)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = pool.map(lambda name: _header(repo, name, survey.stored[name]), to_read)
        for done, (pack, outcome) in enumerate(zip(to_read, outcomes, strict=True), 1):
            progress("pack headers", done, len(to_read))
            if outcome is None:
                del survey.stored[pack]  # deleted since the listing
            elif isinstance(outcome, list):
                survey.headers_read += 1
                if outcome:
                    survey.packs[pack] = {e.blob_id: e for e in outcome}
            elif indexed.get(pack):
                survey.kept_from_index[pack] = outcome
                survey.packs[pack] = indexed[pack]
            else:
                survey.unreadable[pack] = outcome
    return survey


def _read_index_files(
    repo: Repository, survey: PackSurvey, progress: Progress
) -> dict[str, dict[bytes, PackEntry]]:
    def read(name: str) -> dict[str, list[PackEntry]] | str:
        try:
            data = repo.storage.get(Kind.INDEX, name)
        except NotFound:
            return {}
        if content_name(data) != name:
            return f"index {name[:16]}: its content does not match its name"
        try:
            return decode_index(data, repo.cipher, name)
        except IntegrityError as exc:
            return str(exc)

    packs: dict[str, dict[bytes, PackEntry]] = {}
    names = survey.index_files
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for done, (name, outcome) in enumerate(zip(names, pool.map(read, names), strict=True), 1):
            progress("index files", done, len(names))
            if isinstance(outcome, str):
                survey.damaged_index_files[name] = outcome
                continue
            for pack, entries in outcome.items():
                merged = packs.setdefault(pack, {})
                for entry in entries:
                    merged.setdefault(entry.blob_id, entry)
    return packs


def _tiles(entries: dict[bytes, PackEntry], size: int) -> bool:
    """Whether index entries account for a pack of ``size`` exactly (blobs edge to edge, then
    a header of one 41-byte entry per blob)."""
    offset = 0
    for entry in sorted(entries.values(), key=lambda e: e.offset):
        if entry.offset != offset:
            return False
        offset += entry.length
    return offset + stored_header_size(len(entries)) == size


def _header(repo: Repository, name: str, size: int) -> list[PackEntry] | str | None:
    try:
        return read_header(repo.storage, repo.cipher, name, size)
    except NotFound:
        return None
    except IntegrityError as exc:
        return str(exc)
