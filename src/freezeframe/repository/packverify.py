"""Reading one pack whole and verifying everything in it: its name (the BLAKE3 of its bytes),
its header against what the index says, and every blob against its id. ``check --read-data``
reports what this finds; ``repair packs`` salvages the blobs it finds intact."""

from __future__ import annotations

from dataclasses import dataclass, field

from freezeframe.errors import FreezeframeError, IntegrityError
from freezeframe.repository.crypto import content_name
from freezeframe.repository.pack import PackEntry, decode_header
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import Kind


@dataclass
class PackReport:
    errors: list[str] = field(default_factory=list)
    bad_blobs: set[bytes] = field(default_factory=set)
    """Blobs of the pack that are missing or fail verification."""
    intact: list[tuple[PackEntry, bytes]] = field(default_factory=list)
    """Verified blobs with their stored (sealed) bytes, for a caller that salvages them."""
    header: list[PackEntry] | None = None
    """The pack's own header, when it reads."""
    size: int = 0
    readable: bool = True

    @property
    def damaged(self) -> bool:
        return bool(self.errors)


def verify_pack(
    repo: Repository, pack: str, blobs: dict[bytes, PackEntry], *, keep_intact: bool = False
) -> PackReport:
    """Read ``pack`` and verify it; ``blobs`` are its blobs as the index knows them (a blob
    only its header lists is verified too). ``keep_intact`` keeps the verified blobs' bytes."""
    report = PackReport()
    try:
        data = repo.storage.get(Kind.DATA, pack)
    except FreezeframeError as exc:
        report.errors.append(f"pack {pack} cannot be read: {exc}")
        report.bad_blobs.update(blobs)
        report.readable = False
        return report
    report.size = len(data)
    if content_name(data) != pack:
        report.errors.append(f"pack {pack}: its content does not match its name (BLAKE3)")
    try:
        report.header = decode_header(data, repo.cipher, pack)
    except IntegrityError as exc:
        report.errors.append(f"{exc}; its blobs are checked one by one using the index")
    else:
        header = {e.blob_id: e for e in report.header}
        differ = set(header.items()) ^ set(blobs.items())
        if differ and blobs:
            report.errors.append(
                f"pack {pack}: its header and the index disagree about {len(differ)} blobs"
            )
        blobs = {**header, **blobs}
    for entry in blobs.values():
        stored = data[entry.offset : entry.offset + entry.length]
        try:
            repo.open_blob(stored, entry.blob_type, entry.blob_id, entry.raw_length)
        except IntegrityError as exc:
            kind = entry.blob_type.name.lower()
            report.errors.append(
                f"pack {pack}: {kind} blob {entry.blob_id.hex()} is damaged ({exc})"
            )
            report.bad_blobs.add(entry.blob_id)
        else:
            if keep_intact:
                report.intact.append((entry, stored))
            else:
                report.intact.append((entry, b""))
    return report
