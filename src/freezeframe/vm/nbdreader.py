"""A disk exported over NBD as an ``ImageReader``: reads, and the ranges that hold data
according to the server's ``base:allocation`` (ranges known to read as zeros are never read)."""

from __future__ import annotations

from collections.abc import Iterator

from freezeframe.vm.nbd import DEFAULT_TIMEOUT, DIRTY_BITMAP_PREFIX, NbdClient
from freezeframe.vm.timeouts import vm_timeout


class NbdImage:
    def __init__(self, client: NbdClient, bitmap: str | None = None) -> None:
        self._client = client
        self._bitmap = bitmap
        self.size = client.size

    def read(self, offset: int, length: int) -> bytes:
        return self._client.read(offset, length)

    def data_extents(self) -> Iterator[tuple[int, int]]:
        if not self._client.can_block_status:
            yield 0, self.size
            return
        for extent in self._client.extents():
            if not extent.is_zero:  # a hole without the zero flag may read as anything
                yield extent.offset, extent.length

    def dirty_extents(self) -> Iterator[tuple[int, int]]:
        if self._bitmap is None:
            yield 0, self.size
            return
        for extent in self._client.extents(DIRTY_BITMAP_PREFIX + self._bitmap):
            if extent.is_dirty:
                yield extent.offset, extent.length

    def close(self) -> None:
        self._client.close()


def open_export(socket_path: str, export: str, bitmap: str | None = None) -> NbdImage:
    """``bitmap``: the dirty bitmap exported with the disk, for an incremental read."""
    client = NbdClient.connect_unix(
        socket_path, export, timeout=vm_timeout(DEFAULT_TIMEOUT), dirty_bitmap=bitmap
    )
    return NbdImage(client, bitmap)
