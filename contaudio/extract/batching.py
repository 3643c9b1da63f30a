"""Batches by length under a frame budget, and shards of whole batches: pure arithmetic on clip lengths.

Clips are sorted longest first (ties by position), cut greedily into batches whose *padded* cost
``clips x longest`` stays under ``max_frames``, and consecutive batches are grouped into shards
of about ``max_bytes``. The order is total, so the clips a resumed run still has to do (the
longest ones are done first) are a suffix of it, and cutting that suffix gives the same batches
and shards as the run that was stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def length_order(frames: Sequence[int]) -> list[int]:
    """Indices of ``frames``, longest first; equal lengths keep their order.

    >>> length_order([3, 9, 3, 5])
    [1, 3, 0, 2]
    """
    return sorted(range(len(frames)), key=lambda i: (-frames[i], i))


def plan_batches(frames: Sequence[int], max_frames: int, max_clips: int) -> list[list[int]]:
    """Indices of ``frames`` cut into batches, longest clips first, each with ``len x longest <= max_frames``.

    A clip longer than the budget alone is a batch of one. ``max_clips`` caps the clips per batch.

    >>> plan_batches([100, 400, 90, 380, 10], max_frames=800, max_clips=8)
    [[1, 3], [0, 2, 4]]
    >>> plan_batches([5000, 10], max_frames=800, max_clips=8)
    [[0], [1]]
    """
    if max_frames < 1 or max_clips < 1:
        raise ValueError(f"max_frames and max_clips must be >= 1, got {max_frames} and {max_clips}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in length_order(frames):
        if current and (len(current) + 1 > max_clips or (len(current) + 1) * longest > max_frames):
            batches.append(current)
            current = []
        if not current:
            longest = max(frames[index], 1)
        current.append(index)
    if current:
        batches.append(current)
    return batches


def padded_frames(lengths: Sequence[int]) -> int:
    """Frames a padded batch of these clips holds: ``len x max``.

    >>> padded_frames([300, 200, 100])
    900
    """
    return len(lengths) * max(lengths, default=0)


def padding_fraction(batches: Iterable[Sequence[int]]) -> float:
    """Share of padded frames that are padding, over all batches (each a list of clip lengths).

    >>> padding_fraction([[300, 200, 100], [50, 50]])
    0.3
    """
    total = valid = 0
    for lengths in batches:
        total += padded_frames(lengths)
        valid += sum(lengths)
    return (total - valid) / total if total else 0.0


def group_shards(batch_bytes: Sequence[int], max_bytes: int) -> list[list[int]]:
    """Consecutive batch indices grouped into shards of at most ``max_bytes`` (at least one batch each).

    >>> group_shards([40, 40, 40, 100, 10], max_bytes=100)
    [[0, 1], [2], [3], [4]]
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    shards: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, nbytes in enumerate(batch_bytes):
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(index)
        size += nbytes
    if current:
        shards.append(current)
    return shards
