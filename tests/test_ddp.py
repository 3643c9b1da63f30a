"""DDP with two gloo ranks on CPU, every encoder weight trainable: one rank encodes speech, the other has no audio.

For every family's tiny card, the training code makes all encoder parameters trainable
(``requires_grad_(True)``, as fine-tuning code does) and wraps the model in DDP with its defaults
(no ``find_unused_parameters``). The rank without audio calls only ``dummy_forward`` and feeds it
through the adaptor as ESPnet's SpeechLM does. The backward all-reduce must complete (gloo's
timeout and a join deadline turn a hang into a failure) and both ranks must hold identical
parameters after two steps (DDP reports a weight without gradient at the next forward).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.audio import SPEECH_DIR
from helpers.families import FAMILY_CASES, needs_family
from helpers.spawn_targets import DDP_STEPS, ddp_rank

from contaudio import ContinuousAudioIO
from contaudio.encoders import UNAVAILABLE

COLLECTIVE_TIMEOUT_S = 60  # gloo: a collective that waits longer raises in the rank
JOIN_TIMEOUT_S = 240  # the test: spawn (imports) + init + every family's steps must finish by then
TAGS = [case.card for case in FAMILY_CASES if case.family not in UNAVAILABLE]  # the ranks build every one
TAG_PARAMS = [pytest.param(case.card, marks=needs_family(case.family)) for case in FAMILY_CASES]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp_path = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(
        ddp_rank,
        args=(
            str(tmp_path / "store"),
            str(tmp_path),
            TAGS,
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


@pytest.mark.parametrize("tag", TAG_PARAMS)
def test_audio_rank_and_dummy_rank_stay_in_sync_with_every_weight_trainable(ranks, tag: str) -> None:
    audio_rank, dummy_rank = ranks[0][tag], ranks[1][tag]
    after0, after1 = audio_rank["after"], dummy_rank["after"]
    assert after0.keys() == after1.keys()
    for name in after0:
        torch.testing.assert_close(after1[name], after0[name], rtol=0, atol=0, msg=name)
    # every parameter got a gradient on both ranks, and the all-reduce carried rank 0's audio gradients
    grads0, grads1 = audio_rank["grads"], dummy_rank["grads"]
    assert grads0.keys() == grads1.keys() == after0.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=0, atol=0, msg=name)
    encoder = [name for name in grads0 if name.startswith("audio.encoder.")]
    assert sum(bool(grads1[name].abs().sum() > 0) for name in encoder) > len(encoder) // 2
    moved = [name for name in encoder if not torch.equal(after1[name], audio_rank["before"][name])]
    assert len(moved) > len(encoder) // 2
    assert DDP_STEPS >= 2


def test_weights_the_forward_never_reads_are_dropped(tiny_io) -> None:
    """What ContinuousAudioIO drops (so DDP needs no find_unused_parameters) is exactly what gets no gradient."""
    assert tiny_io.dropped_weights == ("audio_bos_eos_token.weight",)
    assert "audio_bos_eos_token.weight" not in tiny_io.encoder.state_dict()
    io = ContinuousAudioIO(encoder_hf_model_tag=tiny_io.source.tag, weights="random", dtype="float32")
    io.encoder.requires_grad_(True)
    torch.cat(io.encode_batch(torch.randn(1, 450, io.n_mels), torch.tensor([450]))).sum().backward()
    assert [name for name, p in io.encoder.named_parameters() if p.grad is None] == []
