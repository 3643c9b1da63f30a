"""Pure verdicts of the conformance checks: is a clip's encoding right, is a length right.

``judge`` decides one clip of ``mask_check``: contaudio's rows for the clip inside a padded
batch, the same clip encoded alone, and the HF oracle's answer (:class:`OracleRows`), with a
dtype-aware tolerance. ``judge_length`` decides one length of ``length_check``. Both only
compare what they are given, so they are unit-tested on hand-made inputs; the experiments
turn their reasons into messages that name the clip.

Who judges a clip is never switched silently: HF's answer judges it, unless HF raised an error
the family declares for that clip (its ``expected_refusals``), when contaudio's documented rule
does and the verdict says which refusal; any other HF error (or a non-finite answer) fails the
clip, naming the error. :func:`share_reason` fails a run whose share of clips HF judged falls
below the family's ``min_oracle_share``.

Reduced precision (bf16/fp16) is judged as HF's own answer is: against HF's float32 answer on the
same clip (the same weights upcast), contaudio's RMS error may be at most :data:`LOW_PRECISION_FACTOR`
times HF's own error at that dtype (:func:`low_precision_bound`); a fixed percentage would let a
padding leak of a few percent pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from contaudio.encoders.oracle import OracleRows
from contaudio.encoders.refusals import NON_FINITE, ClipSize, ExpectedRefusal, matching_refusal


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


# Reduced precision: contaudio's RMS error against HF's float32 answer may be at most this many times HF's own at the
# same dtype (tests/encoders/test_packed_gpu.py holds the CUDA kernels to 1.1x over a whole batch; one short clip varies
# more: measured <= 1.21x on the tiny cards' clean bf16 clips, >= 3.2x for padding_leak's 1.5-3 % leaks).
LOW_PRECISION_FACTOR = 1.5
# ... plus this fraction of max |float32 answer|: binds only where HF's own error is exactly 0 (far below one bf16 or
# fp16 unit in the last place, 2**-8 and 2**-11 of the value).
LOW_PRECISION_FLOOR = 1e-4

ORACLE = "oracle"  # HF's answer judged the clip
RULE = "documented rule"  # HF refused the clip as its family declares; contaudio's rule judged it
UNJUDGED = "no judge"  # HF failed in a way nobody declared: the clip fails
NOT_ASKED = "not asked"  # the run did not ask HF (mask_check.reference=false)


@dataclass(frozen=True)
class Verdict:
    """Pass/fail, every reason it failed, how it was judged, and the figures behind it.

    judged_by: :data:`ORACLE`, :data:`RULE` (a declared refusal; ``figures["refusal"]`` says which),
    :data:`UNJUDGED` (HF failed undeclared: a reason says how) or :data:`NOT_ASKED`.
    """

    passed: bool
    reasons: tuple[str, ...] = ()
    judged_by: str = ORACLE
    figures: dict[str, float | int | str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Standing:
    """Who may judge a clip given HF's answer: ``judged_by``, the reason it fails (if so), the refusal (if any)."""

    judged_by: str
    reason: str | None = None
    refusal: ExpectedRefusal | None = None


def hf_error(oracle: OracleRows) -> str | None:
    """HF's failure for a clip as one string: the error it raised, :data:`NON_FINITE` for a NaN/Inf answer, or None.

    >>> hf_error(OracleRows(torch.tensor([[float("nan")]]))), hf_error(OracleRows(torch.zeros(1, 2)))
    ('NonFiniteOutput: HF returned non-finite values', None)
    """
    if oracle.rows is None:
        return oracle.error or "HF returned no rows and no error"
    return None if finite(oracle.rows) else NON_FINITE


def standing(oracle: OracleRows, clip: ClipSize, refusals: Sequence[ExpectedRefusal]) -> Standing:
    """Whether HF's answer judges ``clip``, a declared refusal hands it to the rule, or the clip fails.

    >>> refusal = ExpectedRefusal("RuntimeError: kernel", "no frame to convolve", frames=range(0, 1))
    >>> standing(OracleRows(None, "RuntimeError: kernel size"), ClipSize(0, 100), [refusal]).judged_by
    'documented rule'
    >>> print(standing(OracleRows(None, "RuntimeError: kernel size"), ClipSize(5, 900), [refusal]).reason)
    HF raised RuntimeError: kernel size, which is no refusal the family declares for a clip of 5 frames (900 samples)
    """
    error = hf_error(oracle)
    if error is None:
        return Standing(ORACLE)
    if (refusal := matching_refusal(error, clip, refusals)) is not None:
        return Standing(RULE, refusal=refusal)
    return Standing(UNJUDGED, f"HF raised {error}, which is no refusal the family declares for a clip of {clip}")


def rms_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Root-mean-square of ``ours - ref`` in float32; 0 for empty clips.

    >>> rms_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
    1.4142135381698608
    """
    if ref.numel() == 0:
        return 0.0
    return float((ours.detach().float() - ref.detach().float()).square().mean().sqrt())


def low_precision_bound(hf_error: float, reference_scale: float) -> float:
    """The largest error contaudio may have against HF's float32 answer, given HF's own error at the same dtype
    (both RMS against that answer) and the answer's max ``|value|``: ``1.5 * hf_error + 1e-4 * scale``.

    >>> low_precision_bound(0.02, 4.0)
    0.0304
    >>> low_precision_bound(0.0, 0.0)  # an empty clip: nothing may differ
    0.0
    """
    return LOW_PRECISION_FACTOR * hf_error + LOW_PRECISION_FLOOR * reference_scale


def low_precision_reasons(
    ours: dict[str, torch.Tensor], hf: torch.Tensor, reference: OracleRows
) -> tuple[list[str], dict[str, float | int | str | None]]:
    """Judge contaudio's reduced-precision rows (``ours``: name -> ``[T, D]``) and HF's (``hf``, same dtype) against
    HF's float32 answer on the same clip: the RMS error of each of ours within :func:`low_precision_bound` of HF's own.

    >>> ref = OracleRows(torch.tensor([[1.0, -2.0]]))
    >>> low_precision_reasons({"batched": torch.tensor([[1.0, -2.01]])}, torch.tensor([[1.0, -2.01]]), ref)[0]
    []
    >>> low_precision_reasons({"batched": torch.tensor([[1.0, -2.05]])}, torch.tensor([[1.0, -2.01]]), ref)[0]
    ['batched differs from HF float32 by 0.0354 RMS, > 1.5x HF own 0.00707 (bound 0.0108)']
    """
    if hf_error(reference) is not None or reference.rows.shape != hf.shape:
        got = reference.describe() if reference.rows is None else f"{tuple(reference.rows.shape)} rows"
        return [f"HF's float32 reference failed ({got}) where HF at this dtype gave {tuple(hf.shape)}"], {}
    scale = float(reference.rows.detach().float().abs().max()) if reference.rows.numel() else 0.0
    own = rms_error(hf, reference.rows)
    bound = low_precision_bound(own, scale)
    figures: dict[str, float | int | str | None] = {"hf_vs_float32": own, "low_precision_bound": bound}
    reasons = []
    for name, rows in ours.items():
        error = rms_error(rows, reference.rows)
        figures[f"{name}_vs_float32"] = error
        if error > bound:
            reasons.append(
                f"{name} differs from HF float32 by {error:.3g} RMS, > {LOW_PRECISION_FACTOR:g}x HF own {own:.3g} "
                f"(bound {bound:.3g})"
            )
    worst = max((figures[f"{name}_vs_float32"] for name in ours), default=0.0)
    figures["ratio_vs_hf_own"] = worst / own if own > 0 else None
    return reasons, figures


def judge(
    batched: torch.Tensor,
    alone: torch.Tensor,
    oracle: OracleRows | None,
    expected_rows: int,
    tolerance: Tolerance,
    clip: ClipSize | None = None,
    refusals: Sequence[ExpectedRefusal] = (),
    reference: OracleRows | None = None,
) -> Verdict:
    """One clip of ``mask_check``.

    batched: the clip's ``[T, D]`` from ``encode_batch`` on a padded batch; alone: the same
    clip encoded by itself; oracle: HF's answer for the clip (None: not asked); expected_rows:
    ``find_length``; clip: its size (for the refusals); refusals: the family's declared ones;
    reference: HF's float32 answer on the same clip, for a reduced-precision run (None: float32).
    Passes when both counts equal ``expected_rows``, the outputs are finite, batched equals alone
    within ``tolerance``, and both agree with HF's rows: the count, and the values within
    ``tolerance`` (float32) or within :func:`low_precision_bound` of HF's own error (``reference``).
    Where HF raised a declared refusal, the count is judged by the documented rule and the verdict
    says so; any other HF failure fails the clip.
    """
    reasons: list[str] = []
    figures: dict[str, float | int | str | None] = {
        "rows": batched.shape[-2],
        "oracle": "not asked" if oracle is None else oracle.describe(),
    }
    if batched.shape[-2] != expected_rows:
        reasons.append(f"encode_batch gave {batched.shape[-2]} rows, find_length says {expected_rows}")
    if alone.shape != batched.shape:
        reasons.append(f"batched shape {tuple(batched.shape)} != alone {tuple(alone.shape)}")
    elif not (finite(batched) and finite(alone)):
        reasons.append("non-finite output")
    else:
        abs_err, rel_err = max_error(batched, alone)
        figures.update(batched_vs_alone_max_abs=abs_err, batched_vs_alone_rel=rel_err)
        if abs_err > tolerance.bound(alone):
            reasons.append(f"batched differs from alone by {abs_err:.3g} (> {tolerance.bound(alone):.3g})")
    if oracle is None:
        return Verdict(not reasons, tuple(reasons), NOT_ASKED, figures)
    where = standing(oracle, clip or ClipSize(batched.shape[-2]), refusals)
    if where.refusal is not None:
        figures["refusal"] = where.refusal.why
    if where.reason is not None:
        reasons.append(where.reason)
    if where.judged_by != ORACLE:
        return Verdict(not reasons, tuple(reasons), where.judged_by, figures)
    reasons += placeholder_reasons(oracle, batched.shape[-2], figures)
    if oracle.rows.shape != batched.shape:
        reasons.append(f"HF gave {tuple(oracle.rows.shape)}, contaudio {tuple(batched.shape)}")
    else:
        abs_err, rel_err = max_error(batched, oracle.rows)
        figures.update(vs_oracle_max_abs=abs_err, vs_oracle_rel=rel_err)
        if reference is not None:
            low, low_figures = low_precision_reasons({"batched": batched, "alone": alone}, oracle.rows, reference)
            reasons += low
            figures.update(low_figures)
        elif abs_err > tolerance.bound(oracle.rows):
            reasons.append(f"differs from HF by {abs_err:.3g} (> {tolerance.bound(oracle.rows):.3g})")
    return Verdict(not reasons, tuple(reasons), where.judged_by, figures)


def judge_length(
    counts: dict[str, int],
    oracle: OracleRows,
    clip: ClipSize | None = None,
    refusals: Sequence[ExpectedRefusal] = (),
) -> Verdict:
    """One length of ``length_check``: contaudio's counts (``find_length``, ``preprocess`` T, encoded rows, ...)
    must all be equal, and equal the rows HF's own path returned. Where HF raised a refusal the family declares
    for ``clip``, the counts are judged by the documented rule and the verdict says so; any other HF failure
    fails the length.

    >>> judge_length({"find_length": 25, "encoded": 25}, OracleRows(torch.zeros(25, 1))).passed
    True
    >>> judge_length({"find_length": 26, "encoded": 26}, OracleRows(torch.zeros(25, 1))).reasons
    ('HF gave 25 rows, contaudio 26',)
    >>> judge_length({"encoded": 0}, OracleRows(None, "ValueError: x"), ClipSize(0, 9)).reasons
    ('HF raised ValueError: x, which is no refusal the family declares for a clip of 0 frames (9 samples)',)
    """
    reasons: list[str] = []
    values = set(counts.values())
    if len(values) != 1:
        reasons.append("contaudio disagrees with itself: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    ours = max(values) if len(values) == 1 else None
    figures: dict[str, float | int | str | None] = {"oracle": oracle.describe()}
    where = standing(oracle, clip or ClipSize(ours if ours is not None else -1), refusals)
    if where.refusal is not None:
        figures["refusal"] = where.refusal.why
    if where.reason is not None:
        reasons.append(where.reason)
    elif where.judged_by == ORACLE:
        figures["hf_rows"] = oracle.count
        if ours is not None and ours != oracle.count:
            reasons.append(f"HF gave {oracle.count} rows, contaudio {ours}")
        reasons += placeholder_reasons(oracle, ours, figures)
    return Verdict(not reasons, tuple(reasons), where.judged_by, figures)


def placeholder_reasons(
    oracle: OracleRows, rows: int | None, figures: dict[str, float | int | str | None]
) -> list[str]:
    """``returns="lm"``: the rows must number the audio placeholders HF's processor writes for the clip (when the
    oracle counted them; recorded in ``figures``).

    >>> placeholder_reasons(OracleRows(torch.zeros(3, 1), placeholders=4), 3, {})
    ["HF's processor writes 4 audio placeholders, contaudio gives 3 rows"]
    """
    if oracle.placeholders is None:
        return []
    figures["hf_placeholders"] = oracle.placeholders
    if rows is not None and rows != oracle.placeholders:
        return [f"HF's processor writes {oracle.placeholders} audio placeholders, contaudio gives {rows} rows"]
    return []


def oracle_share(judged_by: Sequence[str]) -> float:
    """The share of a run's clips HF's answer judged (1.0 for a run without clips).

    >>> oracle_share(["oracle", "oracle", "documented rule", "oracle"])
    0.75
    """
    return sum(j == ORACLE for j in judged_by) / len(judged_by) if judged_by else 1.0


def share_reason(judged_by: Sequence[str], min_share: float, family: str) -> str | None:
    """Why a run fails for lack of HF verdicts (the share HF judged is below the family's ``min_oracle_share``),
    or None. Clips nobody asked HF about are left out.

    >>> print(share_reason(["oracle"] * 9 + ["documented rule"], 0.95, "phi4_multimodal"))
    HF judged 9 of 10 clips (90.0 %), below phi4_multimodal's min_oracle_share 95.0 %: the rest were \
refused; if this run holds mostly clips the family's expected_refusals name, give it longer clips
    >>> share_reason(["oracle"] * 9 + ["documented rule"], 0.9, "x") is None
    True
    """
    asked = [j for j in judged_by if j != NOT_ASKED]
    share = oracle_share(asked)
    if share >= min_share:
        return None
    judged = sum(j == ORACLE for j in asked)
    return (
        f"HF judged {judged} of {len(asked)} clips ({100 * share:.1f} %), below {family}'s min_oracle_share "
        f"{100 * min_share:.1f} %: the rest were refused; if this run holds mostly clips the family's "
        "expected_refusals name, give it longer clips"
    )
