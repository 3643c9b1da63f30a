"""DDP with two gloo ranks on CPU: one rank encodes speech, the other has no audio.

The rank without audio calls only ``dummy_forward``; the backward all-reduce must
complete (no hang: gloo's timeout and a join deadline turn one into a failure) and
both ranks must hold identical parameters after each optimiser step.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SPEECH_DIR, TINY_QWEN_OMNI
from spawn_targets import DDP_STEPS, ddp_rank

COLLECTIVE_TIMEOUT_S = 60  # gloo: a collective that waits longer raises in the rank
JOIN_TIMEOUT_S = 150  # the test: spawn (imports) + init + steps must finish by then

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def run_ranks(tmp_path) -> list[dict]:
    ctx = mp.start_processes(
        ddp_rank,
        args=(
            str(tmp_path / "store"),
            str(tmp_path),
            TINY_QWEN_OMNI,
            str(SPEECH_DIR / "quick_brown_fox_16k.wav"),
            COLLECTIVE_TIMEOUT_S,
        ),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"DDP ranks did not finish within {JOIN_TIMEOUT_S} s (hang in a collective?)")
    finally:
        for process in ctx.processes:  # only ours, by handle
            if process.is_alive():
                process.kill()
                process.join(5)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_audio_rank_and_dummy_rank_stay_in_sync(tmp_path) -> None:
    audio_rank, dummy_rank = run_ranks(tmp_path)
    after0, after1 = audio_rank["after"], dummy_rank["after"]
    assert after0.keys() == after1.keys()
    for name in after0:
        torch.testing.assert_close(after1[name], after0[name], rtol=0, atol=0, msg=name)

    # The all-reduce carried rank 0's audio gradients to rank 1: the rank that saw no audio
    # used the same, non-zero encoder gradients and its encoder weights moved.
    grads0, grads1 = audio_rank["grads"], dummy_rank["grads"]
    assert grads0.keys() == grads1.keys()
    trainable_encoder = [name for name in after0 if name.startswith("audio.encoder.") and name in grads0]
    assert len(trainable_encoder) == len(after0) - 3  # all but the frozen token and the head's 2 tensors
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=0, atol=0, msg=name)
    assert all(grads1[name].abs().sum() > 0 for name in ("audio.encoder.conv1.weight", "audio.encoder.proj.weight"))
    before = audio_rank["before"]
    assert not torch.equal(after1["audio.encoder.conv1.weight"], before["audio.encoder.conv1.weight"])
    assert DDP_STEPS >= 2  # DDP reports a weight without gradient only at the next forward


def test_frozen_weights_are_exactly_those_the_forward_never_reads(tiny_io) -> None:
    """What ContinuousAudioIO freezes (so DDP needs no find_unused_parameters) is what gets no gradient."""
    frozen = {name for name, p in tiny_io.encoder.named_parameters() if not p.requires_grad}
    assert frozen == {"audio_bos_eos_token.weight"}
    tiny_io.encoder.zero_grad(set_to_none=True)
    try:
        tiny_io.encoder.requires_grad_(True)
        mel = torch.randn(1, 450, tiny_io.n_mels)
        torch.cat(tiny_io.encode_batch(mel, torch.tensor([450]))).sum().backward()
        no_grad = {name for name, p in tiny_io.encoder.named_parameters() if p.grad is None}
    finally:
        for name, p in tiny_io.encoder.named_parameters():
            p.requires_grad_(name not in frozen)
        tiny_io.encoder.zero_grad(set_to_none=True)
    assert no_grad == frozen
    assert "audio_bos_eos_token.weight" in tiny_io.encoder.state_dict()  # still saved and loaded
