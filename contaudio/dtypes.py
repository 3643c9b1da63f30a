"""Compute dtypes: names, ``"auto"``, and whether this CPU runs bf16/fp16 GEMMs natively.

torch runs CPU bf16/fp16 matmuls through oneDNN. With hardware support (AVX512-BF16 or AMX for
bf16; AVX512-FP16 or AMX-FP16 for fp16) they are faster than float32; without it they fall back to
emulation: 0.8 GFLOP/s against 123 GFLOP/s in float32 for a 1024x1280 @ 1280x5120 GEMM on an
AVX2-only AMD EPYC, ~150x slower. ``dtype="auto"`` never picks a dtype this machine emulates.

The decision is a pure function of the CPU's feature flags and oneDNN's ISA cap
(``ONEDNN_MAX_CPU_ISA``, which lowers the kernels oneDNN may use), so it is testable anywhere.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
# CPU flags (as /proc/cpuinfo names them) that make oneDNN's GEMM native in each low-precision dtype
NATIVE_CPU_FLAGS: dict[torch.dtype, frozenset[str]] = {
    torch.bfloat16: frozenset({"avx512_bf16", "amx_bf16"}),
    torch.float16: frozenset({"avx512_fp16", "amx_fp16"}),
}
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA values) that still allow each dtype's native kernels
_BF16_ISAS = frozenset(
    [
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX10_1_512",
        "AVX512_CORE_AMX",
        "AVX10_1_512_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
        "ALL",
    ]
)
NATIVE_ONEDNN_ISAS: dict[torch.dtype, frozenset[str]] = {
    torch.bfloat16: _BF16_ISAS,
    torch.float16: _BF16_ISAS - {"AVX512_CORE_BF16", "AVX512_CORE_AMX"},
}
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# measured on a 2-core AVX2-only AMD EPYC (torch 2.13): bf16 and fp16 GEMMs vs float32
EMULATED_SLOWDOWN = "~150x slower than float32 (0.8 vs 123 GFLOP/s measured on an AVX2-only AMD EPYC)"


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved compute dtype and why it was chosen (for logs and result records)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``.

    >>> dtype_name(torch.float16)
    'float16'
    """
    return str(dtype).removeprefix("torch.")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` (and fp16, fp32) -> ``torch.dtype``.

    torch's own names of these dtypes (``getattr(torch, name)``, what ESPnet's class reads) work too.

    >>> parse_dtype("bf16"), parse_dtype(torch.float32), parse_dtype("half"), parse_dtype("float")
    (torch.bfloat16, torch.float32, torch.float16, torch.float32)
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, str) and getattr(torch, dtype, None) in DTYPES.values():  # ESPnet: getattr(torch, dtype)
        log.info("dtype %r read as %s (torch's name for it, as ESPnet reads it)", dtype, getattr(torch, dtype))
        return getattr(torch, dtype)
    raise ValueError(
        f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)} or {AUTO!r} "
        "(or torch's own name of one of them, e.g. 'half')"
    )


def cpu_runs_natively(dtype: torch.dtype, cpu_flags: frozenset[str], onednn_max_isa: str | None) -> bool:
    """Whether this CPU's GEMMs run ``dtype`` in hardware (float32 always does).

    >>> cpu_runs_natively(torch.bfloat16, frozenset({"avx2", "avx512_bf16"}), None)
    True
    >>> cpu_runs_natively(torch.bfloat16, frozenset({"avx2", "avx512_bf16"}), "AVX2")
    False
    >>> cpu_runs_natively(torch.float16, frozenset({"avx512_bf16"}), None)
    False
    """
    if dtype not in NATIVE_CPU_FLAGS:
        return True
    if not NATIVE_CPU_FLAGS[dtype] & cpu_flags:
        return False
    return onednn_max_isa is None or onednn_max_isa.strip().upper() in NATIVE_ONEDNN_ISAS[dtype]


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags (Linux ``/proc/cpuinfo``; empty where it does not exist)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def onednn_isa_cap() -> str | None:
    """oneDNN's ISA cap from the environment, if any."""
    return next((os.environ[name] for name in ONEDNN_ISA_VARIABLES if os.environ.get(name)), None)


def native_on_this_cpu(dtype: torch.dtype) -> bool:
    """:func:`cpu_runs_natively` for this machine."""
    return cpu_runs_natively(dtype, cpu_flags(), onednn_isa_cap())


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> DtypeChoice:
    """A dtype name (or ``"auto"``) -> the dtype to compute in on ``device``, with the reason.

    ``"auto"``: bf16 on CUDA devices that support it and on CPUs with native bf16 GEMMs
    (AVX512-BF16 or AMX, not capped by ``ONEDNN_MAX_CPU_ISA``); float32 otherwise.
    """
    if dtype != AUTO:
        return DtypeChoice(parse_dtype(dtype), "requested")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, f"auto: {torch.cuda.get_device_name(device)} supports bf16")
        return DtypeChoice(torch.float32, f"auto: {torch.cuda.get_device_name(device)} has no bf16")
    if native_on_this_cpu(torch.bfloat16):
        return DtypeChoice(torch.bfloat16, "auto: this CPU runs bf16 GEMMs natively (AVX512-BF16/AMX)")
    cap = onednn_isa_cap()
    why = f"oneDNN is capped at {cap}" if cap else "no AVX512-BF16/AMX"
    return DtypeChoice(torch.float32, f"auto: this CPU emulates bf16 ({why}); bf16 would run {EMULATED_SLOWDOWN}")


def emulation_warning(dtype: torch.dtype, device: torch.device) -> str | None:
    """The warning to give when ``dtype`` would be emulated on this CPU; None when it is fine."""
    if device.type != "cpu" or native_on_this_cpu(dtype):
        return None
    name = dtype_name(dtype)
    return (
        f"dtype={name} on a CPU without native {name} GEMMs: torch emulates them, {EMULATED_SLOWDOWN}. "
        f"Pass dtype='float32' (or dtype='auto', which picks it here) unless you need {name} numerics"
    )
