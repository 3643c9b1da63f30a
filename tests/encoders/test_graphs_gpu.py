"""``cuda_graphs=True`` on CUDA (skipped without a GPU): a replay is bitwise the eager run of the same padded grid,
close to the packed eager forward, replays without a new capture or a host sync, and holds one graph per bucket.
The grid's arithmetic against the eager forward for every family and mode: ``test_graphs.py`` (CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers.batches import random_padded_batch

from contaudio import ContinuousAudioIO
from contaudio.encoders.graphs import CudaGraphStacks
from contaudio.encoders.packed import stack_runner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CARDS = ("contaudio/tiny-qwen2.5-omni", "contaudio/tiny-qwen3-omni", "contaudio/tiny-qwen2-audio")
LENGTHS = [45, 250, 1013]
OTHER_BUCKET = [400]  # two full windows: another grid shape
# the grid runs masked SDPA over padded windows where the packed forward runs varlen/grid kernels on packed rows:
# the same attention, other kernels and GEMM shapes (bf16 rounds differently; float32 agrees to TF32-free rounding)
RELATIVE_RMS = {"bfloat16": 1e-2, "float32": 1e-5}


def build(tag: str, dtype: str, cuda_graphs: bool) -> ContinuousAudioIO:
    return ContinuousAudioIO(
        encoder_hf_model_tag=tag, weights="random", dtype=dtype, device="cuda", cuda_graphs=cuda_graphs
    )


def encode(io: ContinuousAudioIO, lengths: list[int], runner=None) -> list[torch.Tensor]:
    mel, lens = random_padded_batch(lengths, n_mels=io.n_mels)
    mel = mel.cuda()  # before any sync check: a pageable upload waits for the host
    with torch.inference_mode(), stack_runner(runner):
        return io.encode_batch(mel, lens)


def relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).pow(2).mean().sqrt() / want.float().pow(2).mean().sqrt().clamp(min=1e-12))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("tag", CARDS)
def test_a_replay_is_the_eager_grid_bitwise_and_the_packed_forward_closely(tag: str, dtype: str) -> None:
    io = build(tag, dtype, cuda_graphs=True)
    replayed = encode(io, LENGTHS)
    assert io.graphs.replays == 1 and len(io.graphs.graphs) == 1
    io.graphs, runner = None, io.graphs  # io's own runner would take the stack before the one passed below
    eager_grid = encode(io, LENGTHS, CudaGraphStacks(capture=False))
    packed = encode(io, LENGTHS)
    io.graphs = runner
    for got, want in zip(replayed, eager_grid, strict=True):
        assert torch.equal(got, want)
    tolerance = RELATIVE_RMS[dtype]
    for clip, (got, want) in enumerate(zip(replayed, packed, strict=True)):
        assert relative_rms(got, want) <= tolerance, f"clip {clip}: {relative_rms(got, want)}"


def test_replays_sync_nothing_and_capture_once_per_bucket() -> None:
    io = build(CARDS[0], "bfloat16", cuda_graphs=True)
    first = encode(io, LENGTHS)
    mel, lens = random_padded_batch(LENGTHS, n_mels=io.n_mels)
    mel = mel.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            again = io.encode_batch(mel, lens)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    encode(io, OTHER_BUCKET)
    encode(io, OTHER_BUCKET)
    assert io.graphs.replays == 4 and len(io.graphs.graphs) == 2
