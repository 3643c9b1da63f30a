"""Benchmark helpers: the FLOP count agrees with torch's own counter on HF's forward; timing calls."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_audio_config
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from contaudio import ContinuousAudioIO
from contaudio.benchmark import (
    encoder_flops,
    matmul_peak_flops,
    qwen3_omni_encoder_flops,
    time_fn,
    windowed_encoder_flops,
)
from contaudio.encoders.qwen2_5_omni import hf_forward
from contaudio.encoders.qwen3_omni import hf_forward_per_clip

# whole chunks only: HF's conv also runs on the padding of a short last chunk, which we do not count
FULL_CHUNK_LENGTHS = [[200], [400, 200], [1000]]


@pytest.mark.parametrize("lengths", FULL_CHUNK_LENGTHS)
def test_flops_match_torch_flop_counter(lengths: list[int]) -> None:
    config = Qwen2_5OmniAudioEncoderConfig(**tiny_audio_config())
    # eager: torch's counter has no formula for CPU SDPA kernels, but counts eager's matmuls
    encoder = Qwen2_5OmniAudioEncoder._from_config(config, attn_implementation="eager").eval()
    lengths_t = torch.tensor(lengths)
    mel = torch.zeros(len(lengths), max(lengths), config.num_mel_bins)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        hf_forward(encoder, mel, lengths_t)
    assert encoder_flops(tiny_audio_config(), lengths_t) == counter.get_total_flops()
    assert encoder_flops(config, lengths) == counter.get_total_flops()  # HF config objects work too


@pytest.mark.parametrize("tag", ["contaudio/tiny-whisper", "contaudio/tiny-qwen2-audio", "contaudio/tiny-voxtral"])
def test_windowed_flops_match_torch_flop_counter(tag: str) -> None:
    """Every clip costs whole 3000-frame windows: a short clip one, a 35 s clip two."""
    io = ContinuousAudioIO(encoder_hf_model_tag=tag, weights="random", dtype="float32", attn_implementation="eager",
                           long_clip="windows")  # fmt: skip
    lengths = torch.tensor([3000, 100, 3500])
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        io.encode_batch(torch.zeros(3, 3500, io.n_mels), lengths)
    assert windowed_encoder_flops(io.encoder.config, lengths) == counter.get_total_flops()
    assert io.family.flops is windowed_encoder_flops


@pytest.mark.parametrize("lengths", [[200], [400, 200], [37], [250, 1013]])
def test_qwen3_flops_match_torch_flop_counter(lengths: list[int]) -> None:
    """Short clips (one unpadded chunk), padded tail chunks and partial attention windows."""
    io = ContinuousAudioIO(encoder_hf_model_tag="contaudio/tiny-qwen3-omni", weights="random", dtype="float32",
                           attn_implementation="eager")  # fmt: skip
    lengths_t = torch.tensor(lengths)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        hf_forward_per_clip(io.encoder, torch.zeros(len(lengths), max(lengths), io.n_mels), lengths_t)
    assert qwen3_omni_encoder_flops(io.encoder.config, lengths_t) == counter.get_total_flops()
    assert io.family.flops is qwen3_omni_encoder_flops


def test_flops_grow_with_tail_chunk() -> None:
    config = tiny_audio_config()
    assert encoder_flops(config, [200]) < encoder_flops(config, [201]) < encoder_flops(config, [400])
    assert encoder_flops(config, [400, 3]) == encoder_flops(config, [400]) + encoder_flops(config, [3])


def test_time_fn_warms_up_and_repeats() -> None:
    calls = []
    seconds = time_fn(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and seconds >= 0.0
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, warmup=0, repeats=0)


def test_matmul_probe_is_finite_and_positive() -> None:
    flops = matmul_peak_flops(torch.float32, "cpu", size=64, warmup=1, repeats=2)
    assert math.isfinite(flops) and flops > 0
