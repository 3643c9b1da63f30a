"""experiments.report: a sweep's rows in job order, labelled by what varies, with each failed job's error."""

from __future__ import annotations

import json

from experiments.report import load_records, plot_labels, summarize


def record(encoder: str, dtype: str, status: str = "ok", error: str | None = None) -> dict:
    config = {"encoder": {"tag": encoder}, "dtype": {"name": dtype}, "device": {"name": "cpu"},
              "attn": {"implementation": None}}  # fmt: skip
    return {"experiment": "bench", "status": status, "error": error, "config": config, "metrics": {}, "job_dir": "."}


def test_rows_come_in_job_order_with_their_errors(tmp_path) -> None:
    for job in (0, 2, 10):
        (tmp_path / str(job)).mkdir()
        failed = job == 10
        rec = record(
            f"contaudio/tiny-{job}", "float32", "error" if failed else "ok", "ValueError: x" if failed else None
        )
        (tmp_path / str(job) / "record-bench.json").write_text(json.dumps(rec))
    rows = [summarize(r) for r in load_records(tmp_path)]
    assert [r["encoder"] for r in rows] == ["contaudio/tiny-0", "contaudio/tiny-2", "contaudio/tiny-10"]
    assert [r["error"] for r in rows] == [None, None, "ValueError: x"]


def test_plot_labels_name_what_varies() -> None:
    rows = [summarize(record(tag, dtype)) for tag in ("Qwen/Qwen2.5-Omni-7B", "openai/whisper") for dtype in
            ("float32", "bfloat16")]  # fmt: skip
    assert plot_labels(rows) == ["Qwen2.5-Omni-7B\nfloat32", "Qwen2.5-Omni-7B\nbfloat16", "whisper\nfloat32",
                                 "whisper\nbfloat16"]  # fmt: skip
    assert plot_labels(rows[:1]) == ["Qwen2.5-Omni-7B\nfloat32\ndefault\ncpu"]  # one job: everything
