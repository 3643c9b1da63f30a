"""Progress in audio time: hours done, audio-seconds per second, ETA (tqdm on a terminal, log lines elsewhere)."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
LOG_EVERY_S = 30.0  # without a terminal (SLURM, CI), a progress line this often


def eta_seconds(done_s: float, total_s: float, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far (None before any progress).

    >>> eta_seconds(30.0, 120.0, 10.0), eta_seconds(0.0, 120.0, 10.0)
    (30.0, None)
    """
    if done_s <= 0 or elapsed_s <= 0:
        return None
    return (total_s - done_s) / (done_s / elapsed_s)


def progress_line(done_s: float, total_s: float, elapsed_s: float) -> str:
    """What one log line says.

    >>> progress_line(1800.0, 7200.0, 60.0)
    '0.50 of 2.00 audio-h (25%), 30.0 audio-s/s, ETA 180 s'
    """
    eta = eta_seconds(done_s, total_s, elapsed_s)
    rate = done_s / elapsed_s if elapsed_s > 0 else 0.0
    share = 100 * done_s / total_s if total_s else 100.0
    return (f"{done_s / SECONDS_PER_HOUR:.2f} of {total_s / SECONDS_PER_HOUR:.2f} audio-h ({share:.0f}%), "
            f"{rate:.1f} audio-s/s, ETA {'?' if eta is None else f'{eta:.0f} s'}")  # fmt: skip


class AudioProgress:
    """Counts audio seconds done out of ``total_s``; a tqdm bar on a terminal, else a log line every 30 s."""

    def __init__(self, total_s: float, desc: str, enabled: bool = True) -> None:
        self.total_s = total_s
        self.done_s = 0.0
        self.start = self._last_log = time.perf_counter()
        self.desc = desc
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=round(total_s, 1), desc=desc, unit="audio-s", unit_scale=False, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, "
                                       "{rate_fmt}{postfix}]")  # fmt: skip

    def update(self, seconds: float) -> None:
        self.done_s += seconds
        if self.bar is not None:
            self.bar.update(round(seconds, 1))
            self.bar.set_postfix_str(f"{self.done_s / SECONDS_PER_HOUR:.2f} audio-h", refresh=False)
        elif self.enabled and time.perf_counter() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.perf_counter()
            log.info("%s: %s", self.desc, progress_line(self.done_s, self.total_s, self._last_log - self.start))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
