"""Redis: writes paused (CLIENT PAUSE ... WRITE) across the snapshot, after a background save
that completes while they are paused, so the RDB file on disk holds the dataset at the pause and
the append-only file, if enabled, ends on a whole command. Reads go on meanwhile.

The pause carries its own expiry (what is left of the cap), kept by the server; if freezeframe
dies while it lasts, the watchdog sends CLIENT UNPAUSE at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, cast

import redis

from freezeframe.errors import QuiesceError

MIN_VERSION = (7, 0)  # CLIENT PAUSE ... WRITE (6.2) and the rdb_saves counter (7.0)


class RedisQuiescer:
    kind = "redis"

    def __init__(self, target: str) -> None:
        self.target = target
        self._client: redis.Redis | None = None

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        try:
            client = redis.Redis.from_url(
                self.target, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
            info = _info(client, "server")
        except (redis.RedisError, ValueError) as exc:
            raise QuiesceError(f"redis: cannot reach {self.target}: {exc}") from exc
        version = tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
        if version < MIN_VERSION:
            raise QuiesceError(
                f"redis: {self.target} runs {info['redis_version']}; freezeframe needs 7.0"
            )
        self._client = client

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        client = self._require()
        try:
            _command(client, "CLIENT", "PAUSE", max(1, int(hold_s * 1000)), "WRITE")
            saves = _info(client, "persistence")["rdb_saves"]  # LASTSAVE counts whole seconds
            client.bgsave()
            deadline = time.monotonic() + timeout_s
            while True:
                persistence = _info(client, "persistence")
                if not persistence["rdb_bgsave_in_progress"] and persistence["rdb_saves"] > saves:
                    break
                if time.monotonic() > deadline:
                    raise QuiesceError(f"redis: the save did not finish within {timeout_s:g} s")
                time.sleep(0.002)
            if persistence["rdb_last_bgsave_status"] != "ok":
                raise QuiesceError("redis: the background save failed")
            replication = _info(client, "replication")
        except redis.RedisError as exc:
            raise QuiesceError(f"redis: cannot hold {self.target}: {exc}") from exc
        return {
            "repl_offset": replication.get("master_repl_offset"),
            "aof_enabled": bool(persistence.get("aof_enabled")),
            "rdb_saved_at": int(persistence["rdb_last_save_time"]),
        }

    def thaw(self, timeout_s: float) -> None:
        if self._client is None:
            return
        try:
            _command(self._client, "CLIENT", "UNPAUSE")
        except redis.RedisError as exc:
            raise QuiesceError(f"redis: cannot unpause {self.target}: {exc}") from exc
        finally:
            self._client.close()
            self._client = None

    def undo_on_crash(self) -> list[str] | None:
        if self.target.startswith("unix://"):  # redis-cli takes no unix:// URL
            where = ["-s", self.target.removeprefix("unix://").split("?")[0]]
        else:
            where = ["-u", self.target]
        return ["redis-cli", *where, "CLIENT", "UNPAUSE"]

    def _require(self) -> redis.Redis:
        if self._client is None:
            raise QuiesceError("redis: prepare was not called")
        return self._client


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    """INFO as a dict (redis-py types it for its async client too)."""
    return cast(dict[str, Any], client.info(section))


def _command(client: redis.Redis, *args: str | int) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
