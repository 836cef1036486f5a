"""``repair index``: write an index that names every blob the packs hold, from scratch.

The survey reads what still reads (index files, then the headers of packs they do not
describe); the result is written as new index files, and only then are all the old ones
deleted, so an interruption leaves the old index, the new one, or both (duplicates harm
nothing). Must run under the exclusive lock: a running backup's packs are not indexed yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from freezeframe.repository.indexfiles import delete_index_files, write_index_files
from freezeframe.repository.repair.survey import Progress, survey_packs
from freezeframe.repository.repository import Repository


@dataclass
class IndexRepair:
    index_files_read: int = 0
    damaged_index_files: dict[str, str] = field(default_factory=dict)
    packs_indexed: int = 0
    blobs_indexed: int = 0
    headers_read: int = 0
    index_files_written: int = 0
    index_files_deleted: int = 0
    missing_packs: list[str] = field(default_factory=list)
    """Packs the old index named but storage lacks: their blobs are gone."""
    unreadable_packs: dict[str, str] = field(default_factory=dict)
    """Packs whose header cannot be read and that no index file describes: not indexed."""
    kept_from_index: dict[str, str] = field(default_factory=dict)
    """Packs whose header is damaged, indexed from an old index file's entries."""

    @property
    def problems(self) -> list[str]:
        """What the new index could not make whole (the user's next steps)."""
        lines = [f"pack {p}: missing from storage; its blobs are lost" for p in self.missing_packs]
        lines += [
            f"pack {p}: not indexed, its header cannot be read ({why}); its blobs are lost"
            for p, why in sorted(self.unreadable_packs.items())
        ]
        lines += [
            f"pack {p}: its header is damaged ({why}); indexed from the old index, "
            "`freezeframe repair packs` rewrites it"
            for p, why in sorted(self.kept_from_index.items())
        ]
        return lines


def repair_index(
    repo: Repository, *, read_all_packs: bool = False, progress: Progress | None = None
) -> IndexRepair:
    """Rebuild the index (see the module docstring); returns what was found and done."""
    report = progress or _no_progress
    survey = survey_packs(repo, read_all_headers=read_all_packs, progress=report)
    entries = survey.entries()
    written = write_index_files(repo, entries)
    deleted = delete_index_files(repo, survey.index_files, set(written), report)
    return IndexRepair(
        index_files_read=len(survey.index_files) - len(survey.damaged_index_files),
        damaged_index_files=survey.damaged_index_files,
        packs_indexed=len(entries),
        blobs_indexed=sum(len(blobs) for blobs in entries.values()),
        headers_read=survey.headers_read,
        index_files_written=len(written),
        index_files_deleted=deleted,
        missing_packs=survey.missing,
        unreadable_packs=survey.unreadable,
        kept_from_index=survey.kept_from_index,
    )


def _no_progress(_phase: str, _done: int, _total: int) -> None:
    pass
