"""Ranks from config, torchrun or a SLURM array: disjoint slices that cover the manifest."""

from __future__ import annotations

import pytest

from contaudio.extract.ranks import RankInfo, rank_slice, resolve_rank

TORCHRUN = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}
SLURM = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "8"}


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_slices_are_disjoint_and_cover_the_manifest(world_size: int) -> None:
    items = list(range(20))
    slices = [rank_slice(items, rank, world_size) for rank in range(world_size)]
    assert sorted(i for s in slices for i in s) == items
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_where_the_rank_comes_from() -> None:
    assert resolve_rank({}) == RankInfo(0, 1, None, "single process")
    assert resolve_rank(TORCHRUN) == RankInfo(2, 4, 0, "torchrun")
    assert resolve_rank(SLURM) == RankInfo(7, 8, None, "SLURM array")
    assert resolve_rank(SLURM, slurm_array=False) == RankInfo()  # a Hydra sweep defines the jobs itself
    assert resolve_rank({**TORCHRUN, **SLURM}, rank=1, world_size=3) == RankInfo(1, 3, None, "config")
    stepped = {
        "SLURM_ARRAY_TASK_ID": "9",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_STEP": "2",
        "SLURM_ARRAY_TASK_COUNT": "5",
    }  # fmt: skip  (--array=1-9:2)
    assert resolve_rank(stepped).rank == 4


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"env": {"RANK": "4", "WORLD_SIZE": "4"}}, r"rank=4 of world_size=4 \(from torchrun\)"),
        ({"env": {}, "rank": 1}, "set both rank and world_size"),
        ({"env": {"RANK": "x", "WORLD_SIZE": "4"}}, "RANK='x' is not an integer"),
    ],
)
def test_bad_ranks_say_so(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        resolve_rank(**kwargs)
