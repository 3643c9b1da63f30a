"""Granite Speech audio tower: the length rule, the packed forward against HF's own model path, loading.

The reference is ``GraniteSpeechModel.get_audio_features`` on each clip ALONE: HF's model has no padding
mask, so its batched call lets a shorter clip read the batch's padding (shown here too). Checked against
it: clips across attention-block, conv and projector-window edges, other block sizes and an even conv
kernel (asymmetric padding), bf16, gradients, training-mode batch norm, and loading the tower from a
checkpoint whose keys carry the model's ``model.`` prefix. What every family shares (loading from a whole
transformers checkpoint, oracle, lengths, padded batches, mutations, FLOPs vs torch) is in
``test_families.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.batches import random_padded_batch
from helpers.checkpoints import TINY_GRANITE_SPEECH, assert_holds_tower, perturb_
from safetensors.torch import save_file
from transformers.models.granite_speech.configuration_granite_speech import GraniteSpeechConfig
from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechModel

from contaudio import ContinuousAudioIO
from contaudio.encoders import find_card, get_family
from contaudio.encoders.granite_speech import (
    PROJECTOR_QUERIES,
    PROJECTOR_WINDOW,
    GraniteSpeechAudioTower,
    granite_speech_rows,
    packed_forward,
)

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = get_family("granite_speech")
ATOL = 1e-5  # fp32, same weights: only kernels and summation order differ (measured ~1e-6)
LOW_PRECISION_FACTOR = 1.1  # packed bf16 error vs fp32 may be at most 1.1x HF's own
GRAD_TOLERANCE = 1e-10  # float64 gradients, relative to the largest entry
N_MELS = 160
# 1 frame, projector-window edges (15), attention-block edges (40 on the tiny card), several blocks and windows
LENGTHS = [1, 2, 14, 15, 16, 39, 40, 41, 79, 80, 233]
VARIANTS = {"tiny card": {}, "one 200-frame block": {"context_size": 200, "max_pos_emb": 256},
            "even conv kernel": {"conv_kernel_size": 4}, "3 blocks": {"num_layers": 3}}  # fmt: skip


def build(overrides: dict | None = None, dtype: torch.dtype = torch.float32) -> GraniteSpeechAudioTower:
    """A random tower from the tiny card (encoder config overridden), weights perturbed so biases are non-zero."""
    raw = {key: value for key, value in find_card(TINY_GRANITE_SPEECH).encoder_config.items() if key != "model_type"}
    raw["encoder_config"] = {**raw["encoder_config"], **(overrides or {})}
    torch.manual_seed(0)
    tower = GraniteSpeechAudioTower(GraniteSpeechConfig(**raw))
    perturb_(tower, seed=1)
    return tower.to(dtype).eval()


def hf_alone(tower: torch.nn.Module, mel: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """HF's get_audio_features on each clip alone: ``[rows, D]`` per clip."""
    return [
        GraniteSpeechModel.get_audio_features(tower, mel[i : i + 1, :m]).pooler_output[0] for i, m in enumerate(lengths)
    ]


def test_rows_rule_int_and_tensor_for_every_length() -> None:
    lengths = torch.arange(0, 3001)
    as_ints = [granite_speech_rows(m) for m in lengths.tolist()]
    assert granite_speech_rows(lengths).tolist() == as_ints
    assert all(isinstance(r, int) for r in as_ints) and granite_speech_rows(lengths).dtype == torch.long
    assert as_ints[:16] == [0] + [PROJECTOR_QUERIES] * PROJECTOR_WINDOW and as_ints[1500] == 300  # 30 s: 300 rows


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_batch_equals_hf_on_each_clip_alone(variant: str) -> None:
    tower = build(VARIANTS[variant])
    mel, lengths = random_padded_batch(LENGTHS, n_mels=N_MELS)
    with torch.inference_mode():
        ours = packed_forward(tower, mel, lengths).split([granite_speech_rows(m) for m in LENGTHS])
        for m, got, reference in zip(LENGTHS, ours, hf_alone(tower, mel, LENGTHS), strict=True):
            torch.testing.assert_close(got, reference, atol=ATOL, rtol=0, msg=f"{variant}: {m} frames")


def test_hfs_own_batched_call_reads_the_padding_of_a_shorter_clip() -> None:
    """Why the clip alone is the reference: HF's batched call gives a short clip other rows (no padding mask)."""
    tower = build()
    mel, lengths = random_padded_batch([233, 50], n_mels=N_MELS)
    with torch.inference_mode():
        batched = FAMILY.reference_forward(tower, mel, lengths)  # one HF call, rows by the processor's count
        short_alone = hf_alone(tower, mel, [233, 50])[1]
        ours = packed_forward(tower, mel, lengths)
    assert float((batched[-len(short_alone) :] - short_alone).abs().max()) > 1e-2
    torch.testing.assert_close(ours[-len(short_alone) :], short_alone, atol=ATOL, rtol=0)


def test_bf16_error_is_no_larger_than_hfs_own() -> None:
    reference, low = build(), build(dtype=torch.bfloat16)
    mel, lengths = random_padded_batch(LENGTHS, n_mels=N_MELS)
    with torch.inference_mode():
        exact = torch.cat(hf_alone(reference, mel, LENGTHS))
        ours = packed_forward(low, mel.bfloat16(), lengths).float()
        hf = torch.cat(hf_alone(low, mel.bfloat16(), LENGTHS)).float()
    assert float((ours - exact).abs().max()) <= LOW_PRECISION_FACTOR * float((hf - exact).abs().max())


def test_gradients_equal_hfs_alone_in_float64() -> None:
    tower = build(dtype=torch.float64)
    mel, lengths = random_padded_batch([80, 33], n_mels=N_MELS)
    mel = mel.double()
    weights = torch.randn(sum(granite_speech_rows(m) for m in (80, 33)), tower.config.text_config.hidden_size,
                          dtype=torch.float64, generator=torch.Generator().manual_seed(2))  # fmt: skip
    grads = []
    for run in (lambda: packed_forward(tower, mel, lengths), lambda: torch.cat(hf_alone(tower, mel, [80, 33]))):
        tower.zero_grad()
        (run() * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in tower.parameters() if p.grad is not None]))
    ours, hf = grads
    assert ours.shape == hf.shape and float((ours - hf).abs().max()) <= GRAD_TOLERANCE * max(1.0, float(hf.abs().max()))


def test_training_mode_batch_norm_sees_only_real_frames() -> None:
    """In training, HF's batch norm takes statistics over whatever it is given; ours over the batch's real
    frames: a clip alone (HF's reference) and the same clip padded in a batch of one agree."""
    tower = build({"dropout": 0.0})
    tower.projector.qformer.train(False)
    tower.encoder.train()
    mel, lengths = random_padded_batch([233], n_mels=N_MELS)
    with torch.no_grad():
        ours = packed_forward(tower, mel, lengths)
        (reference,) = hf_alone(tower, mel, [233])
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


def test_other_projector_windows_are_refused() -> None:
    tower = build()
    tower.projector.window_size = 10
    with pytest.raises(ValueError, match="window_size=10"):
        packed_forward(tower, torch.zeros(1, 20, N_MELS), torch.tensor([20]))


def test_loads_the_tower_from_model_prefixed_keys_and_nothing_else(tmp_path) -> None:
    """A checkpoint stored with the module names (``model.encoder.*``, ``model.projector.*``) next to the LM."""
    tower = build()
    config = {**find_card(TINY_GRANITE_SPEECH).encoder_config, "text_config": {"model_type": "granite",
              "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = {f"model.{key}": value.contiguous() for key, value in tower.state_dict().items()}
    state["model.language_model.embed_tokens.weight"] = torch.zeros(4, 32)
    save_file(state, tmp_path / "model.safetensors")
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    assert io.family is FAMILY and io.feature_dim() == 32
    assert_holds_tower(io, tower.state_dict())
