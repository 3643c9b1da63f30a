"""Batches under the frame budget, every clip once, and the same batches and shards for a resumed run."""

from __future__ import annotations

import numpy as np
import pytest

from contaudio.extract.batching import group_shards, padded_frames, padding_fraction, plan_batches


@pytest.mark.parametrize("seed", range(5))
def test_batches_hold_every_clip_once_under_the_budget(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = rng.integers(1, 6000, size=300).tolist()
    batches = plan_batches(frames, max_frames=20_000, max_clips=16)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for batch in batches:
        lengths = [frames[i] for i in batch]
        assert len(batch) <= 16
        assert padded_frames(lengths) <= 20_000 or len(batch) == 1
        assert lengths == sorted(lengths, reverse=True)
    longest = [frames[b[0]] for b in batches]
    assert longest == sorted(longest, reverse=True)  # longest clips first: a killed run has done the longest


def test_sorting_keeps_padding_small() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 6000, size=500).tolist()
    batches = plan_batches(frames, max_frames=30_000, max_clips=64)
    in_manifest_order = [frames[i : i + 8] for i in range(0, 500, 8)]
    assert padding_fraction([[frames[i] for i in b] for b in batches]) < 0.05 < padding_fraction(in_manifest_order)


@pytest.mark.parametrize("done_shards", [1, 3])
def test_a_resumed_run_forms_the_same_batches_and_shards(done_shards: int) -> None:
    """Clips of the first shards done: planning the rest gives the rest of the original plan."""
    rng = np.random.default_rng(1)
    frames = rng.integers(1, 3000, size=120).tolist()
    batches = plan_batches(frames, max_frames=8000, max_clips=8)
    shards = group_shards([sum(frames[i] for i in b) for b in batches], max_bytes=20_000)
    done = {i for s in shards[:done_shards] for b in s for i in batches[b]}
    rest = [i for i in range(len(frames)) if i not in done]
    rest_batches = [[rest[j] for j in b] for b in plan_batches([frames[i] for i in rest], 8000, 8)]
    rest_shards = group_shards([sum(frames[i] for i in b) for b in rest_batches], max_bytes=20_000)
    assert rest_batches == batches[len(batches) - len(rest_batches) :]
    assert [[rest_batches[b] for b in s] for s in rest_shards] == [[batches[b] for b in s] for s in
                                                                   shards[done_shards:]]  # fmt: skip


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="max_frames and max_clips must be >= 1"):
        plan_batches([1, 2], max_frames=0, max_clips=4)
    with pytest.raises(ValueError, match="max_bytes"):
        group_shards([1], max_bytes=0)
    assert plan_batches([], 100, 4) == [] and padding_fraction([]) == 0.0
