"""Benchmark helpers: timing calls, the GEMM probe, device peaks and the generic FLOP pieces.

The generic MAC counts are checked against torch's own FLOP counter on one HF Whisper-style
block; each family's whole FLOP rule is checked in ``tests/encoders/test_families.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.checkpoints import TINY_VOXTRAL, card_encoder_config, tiny_audio_config
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoderLayer
from transformers.models.voxtral.configuration_voxtral import VoxtralEncoderConfig

from contaudio.benchmark import (
    FLOPS_PER_MAC,
    TERA,
    attention_macs,
    block_macs,
    config_value,
    matmul_peak_flops,
    nominal_peak_flops,
    peak_memory_of,
    sync,
    time_fn,
)


def test_time_fn_warms_up_and_repeats() -> None:
    calls = []
    seconds = time_fn(lambda: calls.append(1), warmup=2, repeats=3, sync_device="cpu")
    assert len(calls) == 5 and seconds >= 0.0
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, warmup=0, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_fn(lambda: None, warmup=-1, repeats=1)


def test_sync_is_a_no_op_off_cuda() -> None:
    sync(None)
    sync("cpu")
    sync(torch.device("cpu"))


def test_matmul_probe_is_finite_and_positive() -> None:
    flops = matmul_peak_flops(torch.float32, "cpu", size=64, warmup=1, repeats=2)
    assert math.isfinite(flops) and flops > 0


@pytest.mark.parametrize(
    ("device_name", "dtype", "tflops"),
    [
        ("NVIDIA H200", torch.bfloat16, 989.0),
        ("NVIDIA H100 80GB HBM3", torch.float16, 989.0),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),  # must not be read as the SXM part
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA H100 80GB HBM3", torch.float32, None),  # no dense fp32 tensor-core peak listed
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, None),
        ("cpu", torch.bfloat16, None),
    ],
)
def test_nominal_peak_flops(device_name: str, dtype: torch.dtype, tflops: float | None) -> None:
    peak = nominal_peak_flops(device_name, dtype)
    assert (peak if peak is None else peak / TERA) == tflops


def test_config_value_reads_dicts_and_hf_configs_with_aliases() -> None:
    raw = card_encoder_config(TINY_VOXTRAL)  # Voxtral names d_model "hidden_size"
    config = VoxtralEncoderConfig(**raw)
    assert config_value(config, "d_model") == raw["hidden_size"] == config_value(raw, "hidden_size")
    assert config_value(tiny_audio_config(), "d_model") == config_value(
        Qwen2_5OmniAudioEncoderConfig(**tiny_audio_config()), "d_model"
    )


@pytest.mark.parametrize("rows", [1, 7, 100])
def test_block_and_attention_macs_equal_torchs_counter_on_one_hf_block(rows: int) -> None:
    """One Whisper-style pre-norm block (HF's Qwen2.5-Omni layer, eager) over one window of ``rows`` rows."""
    config = Qwen2_5OmniAudioEncoderConfig(**tiny_audio_config())
    config._attn_implementation = "eager"  # torch's counter has no formula for CPU SDPA kernels
    layer = Qwen2_5OmniAudioEncoderLayer(config).eval()
    hidden = torch.randn(rows, config.d_model)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        layer(hidden, cu_seqlens=torch.tensor([0, rows], dtype=torch.int32))
    expected = block_macs(rows, config.d_model, config.encoder_ffn_dim) + attention_macs(rows, config.d_model)
    assert FLOPS_PER_MAC * expected == counter.get_total_flops()


def test_peak_memory_is_only_measured_on_cuda() -> None:
    assert peak_memory_of(lambda: None, torch.device("cpu")) is None
