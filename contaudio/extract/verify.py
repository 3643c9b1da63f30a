"""``verify=N``: is what the store holds what the encoder gives?

Every stored clip: the tensor's rows (from its shard header), the index's rows and ``find_length``
of the clip as its file header gives it now must agree, and its width must be the encoder's.
N random clips: decoded, preprocessed and encoded again from scratch, alone, and compared with
the stored rows within the tolerance of the coarser of the compute and the stored dtype
(:data:`contaudio.conformance.TOLERANCES`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from contaudio.conformance import TOLERANCES, Tolerance, finite, max_error
from contaudio.extract.manifests import Clip
from contaudio.extract.probe import ClipLength, load
from contaudio.extract.store import FeatureStore
from contaudio.io import ContinuousAudioIO

MAX_REPORTED = 20  # failure messages kept in the report (the count is always complete)


def storage_tolerance(compute: torch.dtype, stored: torch.dtype) -> Tolerance:
    """The looser tolerance of the compute dtype and the dtype the features were stored in.

    >>> storage_tolerance(torch.float32, torch.bfloat16) == TOLERANCES[torch.bfloat16]
    True
    """
    return max((TOLERANCES[compute], TOLERANCES[stored]), key=lambda t: (t.atol, t.rtol))


@dataclass
class VerifyReport:
    """What verify checked and every way it failed (``failures`` holds the first messages)."""

    lengths_checked: int = 0
    values_checked: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def fail(self, message: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append(message)

    def summary(self) -> dict:
        return {"passed": self.passed, "lengths_checked": self.lengths_checked, "values_checked": self.values_checked,
                "failed": self.failed, "failures": self.failures, "max_abs_error": self.max_abs_error}  # fmt: skip


def check_lengths(
    store: FeatureStore, io: ContinuousAudioIO, clips: Mapping[str, Clip], lengths: Mapping[str, ClipLength]
) -> VerifyReport:
    """Stored rows (shard header) == index rows == ``find_length`` now, and width == the encoder's, for every
    stored clip of ``clips`` (a rank checks its own slice; clips no longer in the manifest are skipped)."""
    report = VerifyReport()
    dim = io.feature_dim()
    for clip_id in (clip_id for clip_id in store if clip_id in clips):
        report.lengths_checked += 1
        shape, entry = store.stored_shape(clip_id), store.entry(clip_id)
        now = lengths.get(clip_id)
        expected = None if now is None else now.rows
        if now is None:
            report.fail(f"clip {clip_id!r}: stored, but its file cannot be probed now (see errors.jsonl)")
        elif not (shape[0] == entry["rows"] == expected and len(shape) == 2 and shape[1] == dim):
            report.fail(f"clip {clip_id!r}: stored tensor {list(shape)}, index rows {entry['rows']}, "
                        f"find_length {expected} x D={dim}")  # fmt: skip
    return report


def check_values(
    store: FeatureStore,
    io: ContinuousAudioIO,
    clips: Mapping[str, Clip],
    lengths: Mapping[str, ClipLength],
    n: int,
    seed: int,
    report: VerifyReport,
) -> VerifyReport:
    """Re-encode ``n`` random stored clips from their files, alone, and compare with the stored rows (clips of
    0 rows have nothing to compare: the length check covers them)."""
    candidates = sorted(i for i in store if i in clips and i in lengths and lengths[i].rows > 0)
    for clip_id in random.Random(seed).sample(candidates, min(n, len(candidates))):
        wav, rate = load(clips[clip_id], lengths[clip_id])
        mel = io.preprocess((wav, rate))[1][1]
        with torch.inference_mode():
            (fresh,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        stored = store[clip_id]
        report.values_checked += 1
        if stored.shape != fresh.shape:
            report.fail(f"clip {clip_id!r}: stored {list(stored.shape)}, encoded again {list(fresh.shape)}")
            continue
        tolerance = storage_tolerance(io.torch_dtype, stored.dtype)
        error, _ = max_error(stored.cpu(), fresh.cpu())
        report.max_abs_error = max(report.max_abs_error, error)
        if not finite(stored) or error > tolerance.bound(fresh):
            report.fail(f"clip {clip_id!r}: stored rows differ from a fresh encode by {error:.3g} "
                        f"(> {tolerance.bound(fresh):.3g} allowed for {stored.dtype})")  # fmt: skip
    return report


def verify_store(
    store: FeatureStore,
    io: ContinuousAudioIO,
    clips: Mapping[str, Clip],
    lengths: Mapping[str, ClipLength],
    n: int,
    seed: int = 0,
) -> VerifyReport:
    """Both checks over the clips of ``store`` (``clips``/``lengths``: the manifest's clips and their probes)."""
    return check_values(store, io, clips, lengths, n, seed, check_lengths(store, io, clips, lengths))
