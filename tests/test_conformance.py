"""The pure verdicts of mask_check and length_check, on hand-made inputs."""

from __future__ import annotations

import math
import re

import pytest
import torch

from contaudio.conformance import (
    LOW_PRECISION_FACTOR,
    NOT_ASKED,
    ORACLE,
    RULE,
    TOLERANCES,
    UNJUDGED,
    Tolerance,
    judge,
    judge_length,
    low_precision_bound,
    max_error,
    oracle_share,
    share_reason,
    tolerance_for,
)
from contaudio.encoders import OracleRows
from contaudio.encoders.refusals import NON_FINITE, ClipSize, ExpectedRefusal

TOL = Tolerance(atol=1e-3, rtol=0.0)
ROWS = torch.arange(12.0).reshape(4, 3) / 10


def test_equal_rows_pass() -> None:
    verdict = judge(ROWS, ROWS.clone(), OracleRows(ROWS.clone()), expected_rows=4, tolerance=TOL)
    assert verdict.passed and verdict.judged_by == "oracle" and verdict.reasons == ()
    assert verdict.figures["vs_oracle_max_abs"] == 0.0 and verdict.figures["rows"] == 4


def test_each_failure_is_named() -> None:
    off = ROWS + 0.01
    cases = {
        "find_length says 5": judge(ROWS, ROWS, OracleRows(ROWS), expected_rows=5, tolerance=TOL),
        "batched differs from alone": judge(ROWS, off, OracleRows(ROWS), expected_rows=4, tolerance=TOL),
        "differs from HF": judge(ROWS, ROWS, OracleRows(off), expected_rows=4, tolerance=TOL),
        "HF gave (3, 3)": judge(ROWS, ROWS, OracleRows(ROWS[:3]), expected_rows=4, tolerance=TOL),
        "alone (3, 3)": judge(ROWS, ROWS[:3], OracleRows(ROWS), expected_rows=4, tolerance=TOL),
        "non-finite": judge(ROWS.clone().fill_(math.nan), ROWS, OracleRows(ROWS), expected_rows=4, tolerance=TOL),
    }
    for expected, verdict in cases.items():
        assert not verdict.passed and any(expected in reason for reason in verdict.reasons), (expected, verdict)


def test_tolerance_is_relative_to_the_reference() -> None:
    loose = Tolerance(atol=0.0, rtol=0.05)  # 5 % of max |ref| = 0.055
    assert judge(ROWS, ROWS, OracleRows(ROWS + 0.05), 4, loose).passed
    assert not judge(ROWS, ROWS, OracleRows(ROWS + 0.06), 4, loose).passed


EMPTY_CLIP = ExpectedRefusal("RuntimeError: kernel", "no frame to convolve", frames=range(0, 1))
SHORT_WAV = ExpectedRefusal("ValueError: too short", "shorter than n_fft", samples=range(1, 400))


def test_an_undeclared_hf_error_fails_the_clip_naming_it() -> None:
    """The issue's case: HF's own path raises for a normal clip: the check fails, never falls back to the rule."""
    raised = OracleRows(None, "ValueError: length of audio_features should match audio_output_lengths")
    verdict = judge(ROWS, ROWS, raised, expected_rows=4, tolerance=TOL, clip=ClipSize(17, 2720), refusals=[EMPTY_CLIP])
    assert not verdict.passed and verdict.judged_by == UNJUDGED
    assert verdict.reasons == (
        "HF raised ValueError: length of audio_features should match audio_output_lengths, "
        "which is no refusal the family declares for a clip of 17 frames (2720 samples)",
    )
    length = judge_length({"find_length": 4, "encoded": 4}, raised, ClipSize(17), [EMPTY_CLIP])
    assert not length.passed and length.judged_by == UNJUDGED and "length of audio_features" in length.reasons[0]


def test_a_declared_refusal_hands_only_its_clips_to_the_rule() -> None:
    raised = OracleRows(None, "RuntimeError: kernel size can't be greater than actual input size")
    empty = torch.empty(0, 3)
    verdict = judge(empty, empty, raised, expected_rows=0, tolerance=TOL, clip=ClipSize(0, 300), refusals=[EMPTY_CLIP])
    assert verdict.passed and verdict.judged_by == RULE and verdict.figures["refusal"] == "no frame to convolve"
    assert not judge(ROWS, ROWS, raised, 3, TOL, ClipSize(0, 300), [EMPTY_CLIP]).passed  # the rule still binds
    assert not judge(ROWS, ROWS, raised, 4, TOL, ClipSize(1, 400), [EMPTY_CLIP]).passed  # the same error, a longer clip
    other = OracleRows(None, "RuntimeError: shape mismatch")
    assert judge(empty, empty, other, 0, TOL, ClipSize(0, 300), [EMPTY_CLIP]).judged_by == UNJUDGED  # another error
    short = OracleRows(None, "ValueError: too short")
    assert judge_length({"encoded": 0}, short, ClipSize(0, 399), [SHORT_WAV]).judged_by == RULE
    assert judge_length({"encoded": 0}, short, ClipSize(0), [SHORT_WAV]).judged_by == UNJUDGED  # samples unknown


def test_a_non_finite_hf_answer_fails_unless_declared() -> None:
    broken = OracleRows(ROWS.clone().fill_(math.inf))  # e.g. torch's CPU bf16 narrow-conv bug inside HF
    verdict = judge(ROWS, ROWS, broken, 4, TOL, ClipSize(2, 320))
    assert not verdict.passed and verdict.judged_by == UNJUDGED and NON_FINITE in verdict.reasons[0]
    narrow = ExpectedRefusal("NonFiniteOutput", "bf16 conv on < 3 frames", frames=range(1, 3))
    assert judge(ROWS, ROWS, broken, 4, TOL, ClipSize(2, 320), [narrow]).judged_by == RULE
    assert judge(ROWS, ROWS, broken, 4, TOL, ClipSize(3, 480), [narrow]).judged_by == UNJUDGED


def test_a_clip_nobody_asked_hf_about_is_said_so() -> None:
    verdict = judge(ROWS, ROWS, None, 4, TOL)
    assert verdict.passed and verdict.judged_by == NOT_ASKED and verdict.figures["oracle"] == "not asked"


def test_a_refusal_must_name_its_clips_and_a_valid_pattern() -> None:
    with pytest.raises(ValueError, match="say which clips"):
        ExpectedRefusal("RuntimeError", "why")
    with pytest.raises(re.error):
        ExpectedRefusal("RuntimeError: (", "why", frames=range(0, 1))


def test_a_run_fails_below_the_familys_oracle_share() -> None:
    judged = [ORACLE] * 3 + [RULE]
    assert oracle_share(judged) == 0.75 and share_reason(judged, 0.75, "f") is None
    assert "below f's min_oracle_share 80.0 %" in share_reason(judged, 0.8, "f")
    assert share_reason([ORACLE, NOT_ASKED, NOT_ASKED], 1.0, "f") is None  # clips not asked are left out


def low_precision_case(leak: float) -> tuple[torch.Tensor, torch.Tensor, OracleRows]:
    """HF's float32 answer, HF's bf16 answer on the same weights (its own rounding), and ours: the bf16 answer
    with the clip's last row leaking ``leak`` (a share of the clip's peak) from the batch's padding."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(40, 16, generator=generator)
    hf = reference.bfloat16().float()  # HF's own error: bf16 rounding, <= 2**-9 of each value
    ours = hf.clone()
    ours[-1] += leak * float(reference.abs().max()) * torch.randn(16, generator=generator).sign()
    return ours, hf, OracleRows(reference)


def test_a_padding_leak_of_a_few_percent_passes_the_old_bf16_rule_and_fails_the_new_one() -> None:
    ours, hf, reference = low_precision_case(leak=0.03)
    old = TOLERANCES[torch.bfloat16]  # the fixed 5e-2 + 5e-2 * max |HF| this replaces for values vs HF
    assert judge(ours, ours, OracleRows(hf), 40, old).passed
    verdict = judge(ours, ours, OracleRows(hf), 40, old, reference=reference)
    assert not verdict.passed and verdict.figures["ratio_vs_hf_own"] > LOW_PRECISION_FACTOR
    assert any("batched differs from HF float32" in reason for reason in verdict.reasons)
    clean, _, _ = low_precision_case(leak=0.0)
    assert judge(clean, clean, OracleRows(hf), 40, old, reference=reference).passed


def test_low_precision_is_judged_relative_to_hfs_own_error() -> None:
    reference = OracleRows(torch.tensor([[1.0, -2.0, 0.5]]))
    hf = torch.tensor([[1.0, -2.02, 0.5]])  # HF's own RMS error at this dtype: 0.02 / sqrt(3)
    inside, outside = torch.tensor([[1.0, -2.029, 0.5]]), torch.tensor([[1.0, -2.0, 0.535]])
    assert low_precision_bound(0.02, 2.0) == pytest.approx(LOW_PRECISION_FACTOR * 0.02 + 2e-4)
    assert judge(inside, inside, OracleRows(hf), 1, TOL, reference=reference).passed
    assert not judge(outside, outside, OracleRows(hf), 1, TOL, reference=reference).passed
    failed_reference = OracleRows(None, "RuntimeError: x")
    verdict = judge(hf, hf, OracleRows(hf), 1, TOL, reference=failed_reference)
    assert not verdict.passed and "float32 reference failed" in verdict.reasons[0]


def test_empty_clips_compare_as_equal() -> None:
    empty = torch.empty(0, 3)
    verdict = judge(empty, empty.clone(), OracleRows(empty.clone()), expected_rows=0, tolerance=TOL)
    assert verdict.passed and max_error(empty, empty) == (0.0, 0.0)


def test_length_verdicts() -> None:
    hf = OracleRows(torch.zeros(25, 2))
    assert judge_length({"find_length": 25, "preprocess_t": 25, "encoded": 25}, hf).passed
    disagree = judge_length({"find_length": 25, "encoded": 24}, hf)
    assert not disagree.passed and "disagrees with itself" in disagree.reasons[0]
    off = judge_length({"find_length": 26, "encoded": 26}, hf)
    assert off.reasons == ("HF gave 25 rows, contaudio 26",) and off.figures["hf_rows"] == 25
    raised = judge_length({"find_length": 0, "encoded": 0}, OracleRows(None, "ValueError: x"), ClipSize(0, 9))
    assert not raised.passed and raised.judged_by == UNJUDGED  # an HF error no refusal declares


def test_dtype_tolerances_and_overrides() -> None:
    assert set(TOLERANCES) == {torch.float32, torch.bfloat16, torch.float16}
    assert TOLERANCES[torch.float32].atol < TOLERANCES[torch.float16].atol < TOLERANCES[torch.bfloat16].atol
    assert tolerance_for(torch.bfloat16, atol=0.5) == Tolerance(0.5, TOLERANCES[torch.bfloat16].rtol)
