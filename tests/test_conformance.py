"""The pure verdicts of mask_check and length_check, on hand-made inputs."""

from __future__ import annotations

import math

import torch

from contaudio.conformance import TOLERANCES, Tolerance, judge, judge_length, max_error, tolerance_for
from contaudio.encoders import OracleRows

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


def test_hf_failure_is_judged_by_the_rule_and_said_so() -> None:
    raised = OracleRows(None, "RuntimeError: boom")
    verdict = judge(ROWS, ROWS, raised, expected_rows=4, tolerance=TOL)
    assert verdict.passed and verdict.judged_by == "documented rule" and "boom" in verdict.figures["oracle"]
    broken = OracleRows(ROWS.clone().fill_(math.inf))  # e.g. torch's CPU bf16 narrow-conv bug inside HF
    assert judge(ROWS, ROWS, broken, 4, TOL).judged_by == "documented rule"
    assert not judge(ROWS, ROWS, raised, expected_rows=3, tolerance=TOL).passed  # the rule still binds


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
    raised = judge_length({"find_length": 0, "encoded": 0}, OracleRows(None, "ValueError: x"))
    assert raised.passed and raised.judged_by == "documented rule"


def test_dtype_tolerances_and_overrides() -> None:
    assert set(TOLERANCES) == {torch.float32, torch.bfloat16, torch.float16}
    assert TOLERANCES[torch.float32].atol < TOLERANCES[torch.float16].atol < TOLERANCES[torch.bfloat16].atol
    assert tolerance_for(torch.bfloat16, atol=0.5) == Tolerance(0.5, TOLERANCES[torch.bfloat16].rtol)
