"""One writer per rank slice: an advisory ``fcntl.flock`` on ``.lock-r<rank>`` in the output folder, held for the run.

A second run on the same slice (the same command started twice, on this machine or another one
sharing the folder) is refused at once, naming the holder: pid, host, world size and start time,
which the holder writes into the lock file. The kernel drops the lock when its process dies (even
by SIGKILL), so a stale lock file never blocks a rerun. The file is never deleted: deleting it would
let two runs lock two different files of one name. A run also refuses to start beside a running
rank of another world size: their slices overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from contaudio.extract.shards import FILE_MODE, RefusedError

LOCK_NAME = ".lock-r{rank:04d}"
LOCK_GLOB = ".lock-r*"
ACQUIRE_TRIES = 5  # another rank's probe holds a lock for microseconds: try again before refusing
ACQUIRE_WAIT_S = 0.02


class LockHeldError(RefusedError):
    """Another process is extracting the same rank slice into the same folder."""


def holder_info(path: Path) -> dict:
    """What a lock file says of its holder (pid, host, rank, world_size, started); {} when unreadable."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def holder_text(info: dict) -> str:
    """A lock holder, for a message."""
    if not info:
        return "a process that left no details"
    return (f"pid {info.get('pid')} on host {info.get('host')} (rank {info.get('rank')} of {info.get('world_size')}, "
            f"started {info.get('started')})")  # fmt: skip


def _held_by_other(path: Path) -> bool:
    """Whether a process holds the lock of ``path`` (probed with a shared lock taken and dropped at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False


def running_ranks(directory: Path) -> list[str]:
    """The extract runs writing into ``directory`` now (their lock held), each as :func:`holder_text` says it."""
    return [holder_text(holder_info(path)) for path in sorted(directory.glob(LOCK_GLOB)) if _held_by_other(path)]


def _acquire(fd: int) -> bool:
    for attempt in range(ACQUIRE_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < ACQUIRE_TRIES:
                time.sleep(ACQUIRE_WAIT_S)
    return False


@contextlib.contextmanager
def rank_lock(directory: Path, rank: int, world_size: int) -> Iterator[Path]:
    """Hold the lock of ``rank``'s slice in ``directory`` for the ``with`` block; refuse (:class:`LockHeldError`)
    when another process holds it, or holds a lock of a rank of another world size."""
    path = directory / LOCK_NAME.format(rank=rank)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except PermissionError:  # a colleague's lock file: locking needs no write access
        fd = os.open(path, os.O_RDONLY)
    try:
        if not _acquire(fd):
            raise LockHeldError(
                f"another extract is writing rank {rank}'s slice into {directory}: {holder_text(holder_info(path))}. "
                "Wait for it to finish (or stop it), then rerun: the rerun resumes where it stopped"
            )
        for other in sorted(directory.glob(LOCK_GLOB)):
            if other != path and _held_by_other(other):
                info = holder_info(other)
                if info.get("world_size") not in (None, world_size):
                    raise LockHeldError(
                        f"{directory} is being written by {holder_text(info)}, whose slices overlap this run's "
                        f"(rank {rank} of {world_size}): wait for that run to finish, or use the same world size"
                    )
        info = {"pid": os.getpid(), "host": socket.gethostname(), "rank": rank, "world_size": world_size,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}  # fmt: skip
        with contextlib.suppress(OSError):  # a read-only lock file still locks; it just names no holder
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
