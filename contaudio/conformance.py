"""Pure verdicts of the conformance checks: is a clip's encoding right, is a length right.

``judge`` decides one clip of ``mask_check``: contaudio's rows for the clip inside a padded
batch, the same clip encoded alone, and the HF oracle's answer (:class:`OracleRows`), with a
dtype-aware tolerance. ``judge_length`` decides one length of ``length_check``. Both only
compare what they are given, so they are unit-tested on hand-made inputs; the experiments
turn their reasons into messages that name the clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from contaudio.encoders.oracle import OracleRows


@dataclass(frozen=True)
class Tolerance:
    """``|ours - ref| <= atol + rtol * max |ref|``, elementwise maximum."""

    atol: float
    rtol: float

    def bound(self, reference: torch.Tensor) -> float:
        """The largest allowed max-abs difference against ``reference``.

        >>> Tolerance(0.1, 0.5).bound(torch.tensor([[1.0, -4.0]]))
        2.1
        """
        scale = float(reference.detach().float().abs().max()) if reference.numel() else 0.0
        return self.atol + self.rtol * scale


# Same weights, same dtype, different kernels and summation orders. float32: measured <= 1e-6 on the
# tiny cards; bf16/fp16: a few ulps of the output's magnitude, amplified through the layer stack.
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(1e-4, 1e-4),
    torch.bfloat16: Tolerance(5e-2, 5e-2),
    torch.float16: Tolerance(1e-2, 1e-2),
}


def tolerance_for(dtype: torch.dtype, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The dtype's tolerance, with either part overridden when given."""
    base = TOLERANCES[dtype]
    return Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)


def max_error(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(max |ours - ref|, that / max |ref|)`` in float32; ``(0, 0)`` for empty clips.

    >>> max_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
    (2.0, 0.5)
    """
    if ref.numel() == 0:
        return 0.0, 0.0
    diff = float((ours.detach().float() - ref.detach().float()).abs().max())
    return diff, diff / max(float(ref.detach().float().abs().max()), torch.finfo(torch.float32).tiny)


def finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


@dataclass(frozen=True)
class Verdict:
    """Pass/fail, every reason it failed, how it was judged, and the figures behind it."""

    passed: bool
    reasons: tuple[str, ...] = ()
    judged_by: str = "oracle"  # "oracle", or "documented rule" where HF gave no usable answer
    figures: dict[str, float | int | str | None] = field(default_factory=dict)


def judge(
    batched: torch.Tensor,
    alone: torch.Tensor,
    oracle: OracleRows,
    expected_rows: int,
    tolerance: Tolerance,
) -> Verdict:
    """One clip of ``mask_check``.

    batched: the clip's ``[T, D]`` from ``encode_batch`` on a padded batch; alone: the same
    clip encoded by itself; oracle: HF's answer for the clip; expected_rows: ``find_length``.
    Passes when both counts equal ``expected_rows``, the outputs are finite, batched equals
    alone within ``tolerance``, and both agree with HF's rows (count and values). Where HF
    raised or returned non-finite values, the count is judged by the documented rule
    (``expected_rows``) and the verdict says so.
    """
    reasons: list[str] = []
    figures: dict[str, float | int | str | None] = {"rows": batched.shape[0], "oracle": oracle.describe()}
    if batched.shape[0] != expected_rows:
        reasons.append(f"encode_batch gave {batched.shape[0]} rows, find_length says {expected_rows}")
    if alone.shape != batched.shape:
        reasons.append(f"batched shape {tuple(batched.shape)} != alone {tuple(alone.shape)}")
    elif not (finite(batched) and finite(alone)):
        reasons.append("non-finite output")
    else:
        abs_err, rel_err = max_error(batched, alone)
        figures.update(batched_vs_alone_max_abs=abs_err, batched_vs_alone_rel=rel_err)
        if abs_err > tolerance.bound(alone):
            reasons.append(f"batched differs from alone by {abs_err:.3g} (> {tolerance.bound(alone):.3g})")
    judged_by = "oracle"
    if oracle.rows is None or not finite(oracle.rows):
        judged_by = "documented rule"  # HF raised, or broke (e.g. torch's CPU bf16 narrow-conv bug)
    elif oracle.rows.shape != batched.shape:
        reasons.append(f"HF gave {tuple(oracle.rows.shape)}, contaudio {tuple(batched.shape)}")
    else:
        abs_err, rel_err = max_error(batched, oracle.rows)
        figures.update(vs_oracle_max_abs=abs_err, vs_oracle_rel=rel_err)
        if abs_err > tolerance.bound(oracle.rows):
            reasons.append(f"differs from HF by {abs_err:.3g} (> {tolerance.bound(oracle.rows):.3g})")
    return Verdict(not reasons, tuple(reasons), judged_by, figures)


def judge_length(counts: dict[str, int], oracle: OracleRows) -> Verdict:
    """One length of ``length_check``: contaudio's counts (``find_length``, ``preprocess`` T, encoded rows, ...)
    must all be equal, and equal the rows HF's own path returned. Where HF raised, the counts are judged
    by the documented rule (the ``"rule"`` count when given) and the verdict says so.

    >>> judge_length({"find_length": 25, "encoded": 25}, OracleRows(torch.zeros(25, 1))).passed
    True
    >>> judge_length({"find_length": 26, "encoded": 26}, OracleRows(torch.zeros(25, 1))).reasons
    ('HF gave 25 rows, contaudio 26',)
    """
    reasons: list[str] = []
    values = set(counts.values())
    if len(values) != 1:
        reasons.append("contaudio disagrees with itself: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    ours = max(values) if len(values) == 1 else None
    if oracle.count is None:
        return Verdict(not reasons, tuple(reasons), "documented rule", {"oracle": oracle.describe()})
    if ours is not None and ours != oracle.count:
        reasons.append(f"HF gave {oracle.count} rows, contaudio {ours}")
    return Verdict(not reasons, tuple(reasons), "oracle", {"oracle": oracle.describe(), "hf_rows": oracle.count})
