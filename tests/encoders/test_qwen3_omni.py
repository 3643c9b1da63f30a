"""Qwen3-Omni audio tower: length rule, audio-tower-only loading, parity with HF's own forward, features."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_QWEN3_OMNI, card_extractor, noise, padded_batch, save_tiny_qwen3_omni
from transformers import Qwen3OmniMoeForConditionalGeneration
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe, processing_qwen3_omni_moe

from contaudio import ContinuousAudioIO
from contaudio.encoders.qwen3_omni import hf_call
from contaudio.lengths import mel_frames, qwen3_omni_rows

ATOL = 1e-5  # fp32, same weights, same kernels: only summation order differs
HOP = 160
pytestmark = pytest.mark.usefixtures("one_thread")


def audio_tower(model):
    """The audio tower inside a full model or a thinker (HF nests it under ``.model``)."""
    thinker = getattr(model, "thinker", model)
    return thinker.model.audio_tower


@pytest.fixture(scope="module")
def io(tiny_qwen3_omni_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_qwen3_omni_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32")


@pytest.fixture(scope="module")
def hf_model(tiny_qwen3_omni_checkpoint) -> Qwen3OmniMoeForConditionalGeneration:
    """The whole saved checkpoint loaded back by transformers itself."""
    directory, _ = tiny_qwen3_omni_checkpoint
    return Qwen3OmniMoeForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()


def hf_audio_features(hf_model, batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """HF's ``thinker.get_audio_features`` on a padded batch ``[B, M, n_mels]``: ``[sum rows, output_dim]``."""
    mask = (torch.arange(batch.shape[1]) < lengths[:, None]).long()
    return hf_model.thinker.get_audio_features(batch.transpose(1, 2), feature_attention_mask=mask).last_hidden_state


def test_rule_equals_hf_length_helpers() -> None:
    ms = torch.arange(0, 30001)
    assert torch.equal(qwen3_omni_rows(ms), modeling_qwen3_omni_moe._get_feat_extract_output_lengths(ms))
    assert torch.equal(qwen3_omni_rows(ms), processing_qwen3_omni_moe._get_feat_extract_output_lengths(ms))
    for m in (0, 1, 99, 100, 101, 200, 29999, 30000):
        assert qwen3_omni_rows(m) == int(qwen3_omni_rows(torch.tensor(m)))


def test_rule_equals_rows_of_the_real_encoder_for_every_m(io) -> None:
    """Every M in 1..450 (four 100-frame chunk boundaries and the 26-row attention windows)."""
    ms = torch.arange(1, 451)
    with torch.inference_mode():
        alone = [hf_call(io.encoder, torch.randn(1, m, 128), torch.tensor([m])).shape[0] for m in ms.tolist()]
        batched = []
        for block in ms.split(75):
            feats = io.encode_batch(torch.randn(len(block), int(block.max()), 128), block)
            batched += [f.shape[0] for f in feats]
    expected = qwen3_omni_rows(ms).tolist()
    assert alone == expected and batched == expected


def test_loads_only_the_audio_tower_from_a_sharded_full_checkpoint(io, tiny_qwen3_omni_checkpoint) -> None:
    directory, model = tiny_qwen3_omni_checkpoint
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    assert io.family.name == "qwen3_omni" and io.feature_dim() == 48
    reference = audio_tower(model).state_dict()
    ours = io.encoder.state_dict()
    assert ours.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(ours[key], tensor), key


@pytest.mark.parametrize("export", ["thinker", "audio_encoder"])
def test_loads_thinker_and_encoder_exports_from_one_file(tmp_path, export: str) -> None:
    if export == "thinker":
        tower = audio_tower(save_tiny_qwen3_omni(tmp_path, thinker_only=True, max_shard_size="10GB"))
    else:
        tower = audio_tower(save_tiny_qwen3_omni(tmp_path / "full"))
        tower.save_pretrained(tmp_path)
        card_extractor(TINY_QWEN3_OMNI).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    for key, tensor in tower.state_dict().items():
        assert torch.equal(io.encoder.state_dict()[key], tensor), key


def test_encode_batch_equals_hf_get_audio_features_one_clip_at_a_time(io, hf_model, rng) -> None:
    """Clips shorter than a chunk, exactly one chunk, and across several attention windows."""
    sizes = [800, 5 * 16000 + 123, 16000, 15999, 32000, 3 * 16000 + 7, 640]
    mels = [io.preprocess((noise(rng, n), 16000))[1][1] for n in sizes]
    batch, lengths = padded_batch(mels, extra=13, fill=5.0)
    with torch.inference_mode():
        ours = io.encode_batch(batch, lengths)
        for feats, mel in zip(ours, mels, strict=True):
            ref = hf_audio_features(hf_model, torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
            assert feats.shape == ref.shape == (qwen3_omni_rows(mel.shape[0]), 48)
            torch.testing.assert_close(feats, ref, atol=ATOL, rtol=0)


def test_encode_batch_equals_one_hf_call_when_every_clip_has_a_full_chunk(io, hf_model, rng) -> None:
    mels = [io.preprocess((noise(rng, n), 16000))[1][1] for n in (16000, 47000, 16001, 90000)]
    batch, lengths = padded_batch(mels)
    with torch.inference_mode():
        ours = torch.cat(io.encode_batch(batch, lengths))
        ref = hf_audio_features(hf_model, batch, lengths)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_hf_batched_call_leaks_padding_into_sub_second_clips(io, hf_model, rng) -> None:
    """Why the packed forward pads each chunk as for its clip alone: in ONE HF call a < 100-frame clip
    sees the padding of the longer chunks (gelu(bias) between the convs), so its features depend on the batch."""
    short, long = (torch.from_numpy(io.preprocess((noise(rng, n), 16000))[1][1]) for n in (37 * HOP, 250 * HOP))
    batch, lengths = padded_batch([short.numpy(), long.numpy()])
    rows = qwen3_omni_rows(37)
    with torch.inference_mode():
        alone = hf_audio_features(hf_model, short[None], torch.tensor([37]))
        hf_together = hf_audio_features(hf_model, batch, lengths)[:rows]
        ours_together = io.encode_batch(batch, lengths)[0]
    assert (hf_together - alone).abs().max() > 100 * ATOL
    torch.testing.assert_close(ours_together, alone, atol=ATOL, rtol=0)


def test_batched_equals_one_at_a_time(io, rng) -> None:
    sizes = [320, 480, 1600, 15840, 16000, 16160, 40000, 100000, 7 * 16000]
    mels = [io.preprocess((noise(rng, n), 16000))[1][1] for n in sizes]
    batch, lengths = padded_batch(mels, extra=40, fill=-3.0)
    with torch.inference_mode():
        batched = io.encode_batch(batch, lengths)
        for i, mel in enumerate(mels):
            (alone,) = io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            assert batched[i].shape == alone.shape == (qwen3_omni_rows(mel.shape[0]), 48)
            torch.testing.assert_close(batched[i], alone, atol=ATOL, rtol=0)


def test_reference_forward_is_the_one_clip_result(io, rng) -> None:
    mels = [io.preprocess((noise(rng, n), 16000))[1][1] for n in (500, 9000, 30000)]
    batch, lengths = padded_batch(mels)
    with torch.inference_mode():
        fast = io.family.forward(io.encoder, batch, lengths)
        reference = io.family.reference_forward(io.encoder, batch, lengths)
    torch.testing.assert_close(fast, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_windows_hold_for_every_kernel(io, tiny_qwen3_omni_checkpoint, rng, attn: str) -> None:
    directory, _ = tiny_qwen3_omni_checkpoint
    other = ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                              attn_implementation=attn)  # fmt: skip
    mel = torch.from_numpy(io.preprocess((noise(rng, 7 * 16000), 16000))[1][1])[None]  # 91 rows: 4 windows
    lengths = torch.tensor([mel.shape[1]])
    with torch.inference_mode():
        torch.testing.assert_close(other.encode_batch(mel, lengths)[0], io.encode_batch(mel, lengths)[0],
                                   atol=ATOL, rtol=0)  # fmt: skip


EDGE_SAMPLES = [1, 160, 161, 320, 321, 1440, 1441, 15840, 15999, 16000, 16001, 32000, 32001, 47841, 64160]


@pytest.mark.parametrize("num_samples", EDGE_SAMPLES)
def test_find_length_equals_preprocess_and_encoder_rows(io, rng, num_samples: int) -> None:
    _, (rows, mel), _ = io.preprocess((noise(rng, num_samples), 16000))
    assert mel.shape[0] == mel_frames(num_samples, HOP)
    with torch.inference_mode():
        (feats,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
    assert io.find_length(num_samples) == rows == feats.shape[0] == qwen3_omni_rows(mel.shape[0])
    assert int(io.find_length(torch.tensor([num_samples]))[0]) == rows
