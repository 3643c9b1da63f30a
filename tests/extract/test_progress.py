"""Progress in audio time: without a terminal (SLURM, CI) a log line says hours done, audio-s/s and ETA."""

from __future__ import annotations

import logging

import pytest

from contaudio.extract import progress


def test_log_lines_without_a_terminal(caplog, monkeypatch) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        bar = progress.AudioProgress(total_s=7200.0, desc="features rank 0 of 1")
        bar.update(1800.0)
        bar.close()
    assert bar.bar is None and bar.done_s == 1800.0
    (line,) = caplog.messages
    assert line.startswith("features rank 0 of 1: 0.50 of 2.00 audio-h (25%), ") and "audio-s/s, ETA" in line


def test_eta() -> None:
    assert progress.eta_seconds(3600.0, 7200.0, 60.0) == pytest.approx(60.0)
    assert progress.progress_line(0.0, 10.0, 0.0).endswith("ETA ?")
