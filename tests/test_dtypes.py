"""dtype="auto" and the bf16/fp16 emulation warning: a pure decision from CPU flags and oneDNN's ISA cap."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import TINY_QWEN_OMNI

from contaudio import ContinuousAudioIO, dtypes
from contaudio.dtypes import cpu_flags, cpu_runs_natively, emulation_warning, parse_dtype, resolve_dtype

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})  # an AMD EPYC of the Zen 2/3 kind
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}  # Zen 4, Cooper Lake
AMX = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}  # Sapphire Rapids
AMX_FP16 = AMX | {"amx_fp16", "avx512_fp16"}  # Granite Rapids
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "cap", "bf16", "fp16"),
    [
        (AVX2_ONLY, None, False, False),
        (AVX512_BF16, None, True, False),
        (AMX, None, True, False),
        (AMX_FP16, None, True, True),
        (AMX, "AVX2", False, False),  # ONEDNN_MAX_CPU_ISA=AVX2: how an AVX2 machine is reproduced
        (AMX, "avx512_core", False, False),  # AVX-512 without its bf16 instructions
        (AMX, "AVX512_CORE_BF16", True, False),
        (AMX_FP16, "ALL", True, True),
    ],
)
def test_native_low_precision_from_flags_and_onednn_cap(flags, cap, bf16: bool, fp16: bool) -> None:
    assert cpu_runs_natively(torch.bfloat16, flags, cap) is bf16
    assert cpu_runs_natively(torch.float16, flags, cap) is fp16
    assert cpu_runs_natively(torch.float32, AVX2_ONLY, "AVX2")


def fake_cpu(monkeypatch, flags: frozenset[str], cap: str | None = None) -> None:
    monkeypatch.setattr(dtypes, "cpu_flags", lambda cpuinfo=None: flags)
    for name in dtypes.ONEDNN_ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)


def test_auto_picks_bf16_only_where_the_cpu_runs_it(monkeypatch) -> None:
    fake_cpu(monkeypatch, AMX)
    choice = resolve_dtype("auto", CPU)
    assert choice.dtype == torch.bfloat16 and "natively" in choice.reason
    fake_cpu(monkeypatch, AVX2_ONLY)
    choice = resolve_dtype("auto", CPU)
    assert choice.dtype == torch.float32 and "150x" in choice.reason and choice.name == "float32"
    fake_cpu(monkeypatch, AMX, cap="AVX2")
    assert "capped at AVX2" in resolve_dtype("auto", CPU).reason
    assert resolve_dtype("bf16", CPU).dtype == torch.bfloat16  # an explicit dtype is kept, as asked


def test_emulated_dtype_warns_once_at_construction(monkeypatch, caplog) -> None:
    fake_cpu(monkeypatch, AVX2_ONLY)
    assert emulation_warning(torch.float32, CPU) is None
    assert "150x" in emulation_warning(torch.bfloat16, CPU) and "float16" in emulation_warning(torch.float16, CPU)
    with caplog.at_level(logging.WARNING, logger="contaudio.io"):
        io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random")  # the seed's bfloat16
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dtype='float32'" in warnings[0].getMessage()
    assert io.torch_dtype == torch.bfloat16
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="contaudio.io"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="auto")
        ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, skip_init_encoder=True)  # no compute, no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_native_cpu_gives_no_warning(monkeypatch, caplog) -> None:
    fake_cpu(monkeypatch, AMX)
    with caplog.at_level(logging.WARNING, logger="contaudio.io"):
        io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="auto")
    assert io.torch_dtype == torch.bfloat16 and not caplog.records


def test_cpu_flags_reads_cpuinfo(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t\t: none\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(Path(tmp_path / "missing")) == frozenset()


def test_parse_dtype_names_what_exists() -> None:
    assert parse_dtype("fp16") == torch.float16
    with pytest.raises(ValueError, match="auto"):
        parse_dtype("float64")
