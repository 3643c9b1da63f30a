"""Which slice of the manifest this process extracts: torchrun ranks and SLURM array tasks, no collectives.

Every rank reads the whole manifest and keeps every ``world_size``-th clip from its own rank on,
so slices are disjoint, cover the manifest, and hold a like mix of clip lengths. Ranks never talk
to each other: each writes its own shards into the shared output folder, and the index is
rebuilt from the shards (:func:`contaudio.extract.shards.write_index`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RankInfo:
    """This process's place: ``rank`` of ``world_size``; ``local_rank``: its GPU on the node (torchrun only)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None
    source: str = "single process"

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank must lie in 0..world_size-1, got rank={self.rank} of world_size={self.world_size} "
                f"(from {self.source})"
            )

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.source})"


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as err:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from err


def resolve_rank(
    env: Mapping[str, str], rank: int | None = None, world_size: int | None = None, slurm_array: bool = True
) -> RankInfo:
    """The slice to extract: explicit ``rank``/``world_size`` first, then torchrun's ``RANK``/``WORLD_SIZE``
    (with ``LOCAL_RANK``), then a SLURM array's ``SLURM_ARRAY_TASK_ID`` among ``SLURM_ARRAY_TASK_COUNT``
    tasks (``slurm_array=False`` skips it: under a Hydra sweep the sweep defines the jobs), else ``0 of 1``.

    >>> resolve_rank({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}).describe()
    'rank 3 of 8 (torchrun)'
    >>> resolve_rank({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "10"}).rank
    4
    """
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError(f"set both rank and world_size, or neither (got rank={rank}, world_size={world_size})")
        return RankInfo(rank, world_size, None, "config")
    if "WORLD_SIZE" in env and "RANK" in env:
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else None
        return RankInfo(_int(env, "RANK"), _int(env, "WORLD_SIZE"), local, "torchrun")
    if slurm_array and "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        step = _int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
        task = (_int(env, "SLURM_ARRAY_TASK_ID") - first) // step
        return RankInfo(task, _int(env, "SLURM_ARRAY_TASK_COUNT"), None, "SLURM array")
    return RankInfo()


def rank_slice(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Every ``world_size``-th item from ``rank`` on.

    >>> rank_slice(list("abcdefg"), 1, 3)
    ['b', 'e']
    """
    return list(items[rank::world_size])


def device_for_rank(device: str, local_rank: int | None) -> str:
    """One GPU per rank: ``"cuda"`` -> ``"cuda:<LOCAL_RANK>"`` under torchrun; anything else unchanged.

    >>> [device_for_rank(d, r) for d, r in (("cuda", 2), ("cuda:1", 2), ("cpu", 2), ("cuda", None))]
    ['cuda:2', 'cuda:1', 'cpu', 'cuda']
    """
    return f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device
