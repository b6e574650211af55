"""One lander per shard: an exclusive lock held for the whole landing run.

The orchestrator starts one run per shard, but a second lander can still appear: a CLI
``eventplatform land`` beside a sensor's run, or a run the daemon believes dead that is not.
Two landers on one shard would each form their own batches (different offset ranges, so
different file names and deduplication tokens): rows twice in the lake and ClickHouse, and
one manifest overwritten by the other. The lock (``flock`` on a file beside the manifest)
makes the second lander wait, then fail with who holds it. The kernel drops the lock when its
holder dies, even by ``kill -9``, so a crashed run never blocks the next one.

``flock`` fences landers on one host (or on a file system with working locks); landers on
several hosts must not share a lake folder without one.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class ShardBusy(RuntimeError):
    """Another process is landing this shard."""


class ShardLock:
    def __init__(self, path: Path, shard_name: str) -> None:
        self.path = path
        self.shard_name = shard_name
        self._fd: int | None = None

    def acquire(self, wait_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise ShardBusy(
                        f"{self.shard_name} is being landed by another process (pid {holder}); "
                        f"waited {wait_s:.0f}s (EP_LAND_SHARD_LOCK_WAIT_S). Two landers on one "
                        "shard would land its events twice."
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
