"""Test audio: noise clips and the committed espeak-ng speech clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16000
SPEECH_DIR = Path(__file__).resolve().parents[2] / "assets" / "speech"


def noise(rng: np.random.Generator, num_samples: int, scale: float = 0.1) -> np.ndarray:
    """Gaussian noise clip, float32."""
    return (rng.standard_normal(num_samples) * scale).astype(np.float32)


def load_speech(name: str) -> tuple[np.ndarray, int]:
    """A committed espeak-ng clip as (int16 samples [N], sample rate)."""
    samples, sr = soundfile.read(SPEECH_DIR / name, dtype="int16")
    return samples, sr


def speech_clips_16k() -> dict[str, np.ndarray]:
    """The committed speech clips as mono float32 at 16 kHz (resampled with soxr where needed)."""
    clips = {}
    for path in sorted(SPEECH_DIR.glob("*.wav")):
        samples, sr = soundfile.read(path, dtype="float32")
        clips[path.stem] = soxr.resample(samples, sr, SAMPLE_RATE).astype(np.float32) if sr != SAMPLE_RATE else samples
    return clips
