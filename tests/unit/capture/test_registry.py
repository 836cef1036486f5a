"""A snapshot provider is chosen by asking every provider, in order, about the volume."""

from __future__ import annotations

from typing import Any, cast

import pytest

from freezeframe.capture.providers import registry
from freezeframe.capture.providers.lvm import LvmProvider
from freezeframe.capture.providers.lvm_report import parse_snapshot_size
from freezeframe.capture.volumes import Volume


class _Asked:
    def __init__(self, name: str, answer: str | None) -> None:
        self.name = name
        self.answer = answer
        self.asked = 0

    def unsupported_reason(self, volume: Volume) -> str | None:
        self.asked += 1
        return self.answer


VOLUME = cast(Volume, type("V", (), {"fs_type": "ext4"})())


def _with(monkeypatch: pytest.MonkeyPatch, *providers: _Asked) -> None:
    monkeypatch.setattr(registry, "PROVIDERS", cast(Any, providers))


def test_the_first_provider_that_supports_the_volume_serves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lvm, btrfs, loop = _Asked("lvm", "not device-mapper"), _Asked("b", None), _Asked("l", None)
    _with(monkeypatch, lvm, btrfs, loop)
    assert registry.provider_for(VOLUME) == (btrfs, None)
    assert (lvm.asked, btrfs.asked, loop.asked) == (1, 1, 0)  # not asked past the first
    answers = registry.answers(VOLUME)
    assert [(cast(_Asked, p).name, why) for p, why in answers] == [
        ("lvm", "not device-mapper"),
        ("b", None),
        ("l", None),
    ]
    assert registry.choose(VOLUME, answers) == (btrfs, None)


def test_no_provider_names_each_providers_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _Asked("btrfs", "not on btrfs"), _Asked("loop-clone", "not a loop"))
    provider, why = registry.provider_for(VOLUME)
    assert provider is None
    assert why == (
        "no snapshot provider for ext4 here: btrfs: not on btrfs; loop-clone: not a loop "
        f"({registry.ELSEWHERE})"
    )


def test_the_real_providers_in_order() -> None:
    assert [p.name for p in registry.PROVIDERS] == ["btrfs", "lvm", "loop-clone"]
    assert {p.name: p for p in registry.PROVIDERS} == registry.BY_NAME


def test_a_snapshot_size_configures_the_lvm_provider() -> None:
    options = registry.SnapshotOptions(lvm_snapshot_size=parse_snapshot_size("512M"))
    lvm = {p.name: p for p in registry.providers(options)}["lvm"]
    assert isinstance(lvm, LvmProvider) and lvm.snapshot_size.size == 512 << 20
