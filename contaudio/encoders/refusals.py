"""Errors HF's own path raises by design for some clips, declared by each family (``expected_refusals``).

A conformance check compares contaudio with HF's answer for every clip. Where HF raises instead, the
clip can only be judged by contaudio's documented rule, and that is allowed only for a refusal the
family declares: which error, for which clips, and why. Any other HF error fails the check, so a
broken or changed HF never silently hands the verdict to contaudio's own rule.

A clip is described by :class:`ClipSize` (its mel frames, and its samples when it came from a
waveform); a refusal applies to the clips whose sizes lie in its ranges.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["NON_FINITE", "ClipSize", "ExpectedRefusal", "matching_refusal"]

NON_FINITE = "NonFiniteOutput: HF returned non-finite values"  # how a NaN/Inf answer of HF reads as an error


@dataclass(frozen=True)
class ClipSize:
    """The size of one clip as a check knows it: mel ``frames``, and ``samples`` when it came from a waveform."""

    frames: int
    samples: int | None = None

    def __str__(self) -> str:
        """
        >>> str(ClipSize(0, 399)), str(ClipSize(3))
        ('0 frames (399 samples)', '3 frames')
        """
        return f"{self.frames} frames" + ("" if self.samples is None else f" ({self.samples} samples)")


@dataclass(frozen=True)
class ExpectedRefusal:
    """An error HF's own path raises by design for some clips.

    error: a regular expression searched in HF's error as the oracle records it (``"Type: message"``;
    a non-finite answer reads as :data:`NON_FINITE`). frames / samples: the clips it applies to (a
    clip's mel frames, its samples; ``None``: any). A bound on samples never applies to a clip given
    as mel frames alone. why: one line saying what HF does and why it refuses.
    """

    error: str
    why: str
    frames: range | None = None
    samples: range | None = None

    def __post_init__(self) -> None:
        re.compile(self.error)  # a bad pattern fails where it is declared, not in the middle of a check
        if self.frames is None and self.samples is None:
            raise ValueError(f"expected refusal {self.error!r}: say which clips it applies to (frames= or samples=)")

    def applies(self, error: str, clip: ClipSize) -> bool:
        """True when ``error`` is this refusal and ``clip`` lies in its ranges.

        >>> empty = ExpectedRefusal("RuntimeError: .*kernel", "no frame to convolve", frames=range(0, 1))
        >>> empty.applies("RuntimeError: kernel too big", ClipSize(0, 399))
        True
        >>> empty.applies("RuntimeError: kernel too big", ClipSize(1, 400)), empty.applies("ValueError: x", ClipSize(0))
        (False, False)
        """
        if not re.search(self.error, error):
            return False
        if self.frames is not None and clip.frames not in self.frames:
            return False
        return self.samples is None or (clip.samples is not None and clip.samples in self.samples)

    def describe(self) -> str:
        """
        >>> ExpectedRefusal("E", "why", frames=range(0, 1)).describe()
        "'E' for clips of frames in [0, 1): why"
        """
        bounds = [f"{name} in [{r.start}, {r.stop})" for name, r in (("frames", self.frames), ("samples", self.samples))
                  if r is not None]  # fmt: skip
        return f"{self.error!r} for clips of {' and '.join(bounds)}: {self.why}"


def matching_refusal(error: str, clip: ClipSize, refusals: Iterable[ExpectedRefusal]) -> ExpectedRefusal | None:
    """The first declared refusal that covers ``error`` for ``clip``, or None (the error is a finding).

    >>> r = ExpectedRefusal("ValueError", "too short", samples=range(1, 400))
    >>> matching_refusal("ValueError: short", ClipSize(0, 10), [r]) is r
    True
    >>> matching_refusal("ValueError: short", ClipSize(0), [r]) is None  # samples unknown: not covered
    True
    """
    return next((refusal for refusal in refusals if refusal.applies(error, clip)), None)
