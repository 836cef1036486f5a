"""``repair packs``: copy the intact blobs of damaged packs into new packs, then drop the
damaged packs from the index and from storage.

A pack is damaged when its bytes no longer match its name, its header does not read, or a blob
in it fails verification. Without names, every pack is read to find them (as ``check
--read-data`` does). The order keeps every intact blob named and stored at every moment:

1. intact blobs of the damaged packs are copied, sealed bytes as they are, into new packs
   (indexed by their own index files);
2. a new index naming every pack except the damaged ones is written;
3. the old index files go, then the damaged packs.

Blobs that were damaged and have no intact copy elsewhere are lost from the index: a later
backup of the same files stores them again (and so heals the snapshots that refer to them), and
``repair snapshots`` rewrites the snapshots that still lack them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from freezeframe.errors import NotFound, UsageError
from freezeframe.repository.index import Index
from freezeframe.repository.indexfiles import delete_index_files, write_index_files
from freezeframe.repository.packer import Packer
from freezeframe.repository.packverify import PackReport, verify_pack
from freezeframe.repository.repair.survey import PackSurvey, Progress, survey_packs
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import Kind

READ_WORKERS = 3


@dataclass
class PackRepair:
    packs_read: int = 0
    damaged: dict[str, list[str]] = field(default_factory=dict)
    """Each damaged pack with what was wrong with it."""
    blobs_salvaged: int = 0
    blobs_lost: list[bytes] = field(default_factory=list)
    """Blobs that were only in damaged packs and did not verify: gone from the repository."""
    packs_written: int = 0
    packs_deleted: int = 0
    index_files_written: int = 0
    index_files_deleted: int = 0


def repair_packs(
    repo: Repository, names: list[str] | None = None, *, progress: Progress | None = None
) -> PackRepair:
    """Repair the packs ``names`` (id prefixes), or every damaged pack; see the module
    docstring. Must run under the exclusive lock."""
    report = progress or _no_progress
    survey = survey_packs(repo, read_all_headers=False, progress=report)
    result = PackRepair()
    candidates = sorted(survey.stored) if names is None else _resolve(survey, names)
    verdicts = _verify(repo, survey, candidates, report)
    result.packs_read = len(verdicts)
    damaged = {pack: v for pack, v in verdicts.items() if v.damaged or pack in survey.unreadable}
    if not damaged:
        return result
    for pack, verdict in damaged.items():
        result.damaged[pack] = verdict.errors or [survey.unreadable.get(pack, "")]

    # (1) intact blobs into new packs.
    new_index = Index()
    packer = Packer(
        repo.storage, repo.cipher, new_index, repo.config.pack_size, lambda _entries: None
    )
    kept = {pack: blobs for pack, blobs in survey.entries().items() if pack not in damaged}
    elsewhere = {e.blob_id for entries in kept.values() for e in entries}
    for verdict in damaged.values():
        for entry, stored in verdict.intact:
            if entry.blob_id not in elsewhere:
                packer.add(entry.blob_type, entry.blob_id, stored, entry.raw_length)
                elsewhere.add(entry.blob_id)
                result.blobs_salvaged += 1
    packer.flush()
    result.packs_written = packer.packs_written
    lost = {blob for v in damaged.values() for blob in v.bad_blobs} - elsewhere
    result.blobs_lost = sorted(lost)

    # (2) a new index without the damaged packs; (3) old index files, then damaged packs.
    old_index_files = sorted(repo.list_names(Kind.INDEX))
    written = set(write_index_files(repo, {**kept, **new_index.by_pack()}))
    result.index_files_written = len(written)
    result.index_files_deleted = delete_index_files(repo, old_index_files, written, report)
    for done, pack in enumerate(sorted(damaged), 1):
        repo.storage.delete(Kind.DATA, pack)
        report("delete packs", done, len(damaged))
    result.packs_deleted = len(damaged)
    return result


def _resolve(survey: PackSurvey, names: list[str]) -> list[str]:
    packs = []
    for name in names:
        matches = [pack for pack in survey.stored if pack.startswith(name.lower())]
        if not matches:
            raise NotFound(f"no pack {name} in the repository")
        if len(matches) > 1:
            raise UsageError(f"pack id {name} is ambiguous; give more digits")
        packs.append(matches[0])
    return sorted(set(packs))


def _verify(
    repo: Repository, survey: PackSurvey, packs: list[str], report: Progress
) -> dict[str, PackReport]:
    """Every pack read and verified; a damaged one is read again keeping its intact blobs'
    bytes (they are few, and sound packs are never held in memory)."""

    def read(pack: str) -> PackReport:
        verdict = verify_pack(repo, pack, survey.packs.get(pack, {}))
        if verdict.damaged:
            verdict = verify_pack(repo, pack, survey.packs.get(pack, {}), keep_intact=True)
        return verdict

    verdicts: dict[str, PackReport] = {}
    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        for done, (pack, verdict) in enumerate(zip(packs, pool.map(read, packs), strict=True), 1):
            report("read packs", done, len(packs))
            verdicts[pack] = verdict
    return verdicts


def _no_progress(_phase: str, _done: int, _total: int) -> None:
    pass
