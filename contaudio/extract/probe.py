"""Clip lengths from file headers, and clip audio from files: both with soundfile, both on the same sample bounds.

``probe`` reads only the header (``soundfile.info``) and counts LM rows with ``find_length`` on a
shape-only view of the clip, so the resampling, channel and duration policy is exactly the one
``preprocess`` applies; ``load`` decodes the same samples for ``preprocess``. A clip that cannot be
read raises :class:`ClipError` with what was wrong; the job records it and goes on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile

from contaudio.extract.manifests import Clip, audio_source
from contaudio.io import ContinuousAudioIO
from contaudio.lengths import resampled_length

SEGMENT_END_SLACK_S = 0.05  # a segment may end this far past its file's end (rounded times): it is cut at the end
UNKNOWN_FRAMES = 2**62  # libsndfile reports SF_COUNT_MAX frames for streams without a length in the header


class ClipError(RuntimeError):
    """A clip that cannot be read or encoded; ``stage`` says where it failed (manifest, probe, decode)."""

    def __init__(self, message: str, stage: str = "probe") -> None:
        super().__init__(message)
        self.stage = stage


# what "this clip cannot be read" raises: our own checks, the file system, soundfile, and the audio policy's
# refusals in preprocess (a rate, channel layout or duration it does not take). Anything else is a bug: it stops
# the job instead of becoming one more line of errors.jsonl.
CLIP_ERRORS: tuple[type[BaseException], ...] = (ClipError, OSError, ValueError, soundfile.LibsndfileError)


@dataclass(frozen=True)
class ClipLength:
    """What a clip costs, without decoding it.

    samples: at the model's rate (what ``preprocess`` resamples to); mel_frames, rows: the
    featurizer's frames and the LM positions ``find_length`` gives; duration_s: of the source
    segment; source_rate/source_start/source_samples/channels: where it lies in its file.
    """

    id: str
    samples: int
    mel_frames: int
    rows: int
    duration_s: float
    source_rate: int
    source_start: int
    source_samples: int
    channels: int

    def record(self) -> dict[str, Any]:
        """The lengths-JSONL line: id, samples (model rate), mel_frames, rows, duration_s."""
        return {"id": self.id, "samples": self.samples, "mel_frames": self.mel_frames, "rows": self.rows,
                "duration_s": round(self.duration_s, 6)}  # fmt: skip


def seconds_to_samples(seconds: float, rate: int) -> int:
    """``round(seconds * rate)`` half up after rounding to 8 decimals (Lhotse's ``compute_num_samples``).

    >>> seconds_to_samples(1.5, 16000), seconds_to_samples(0.00003125, 16000), seconds_to_samples(2.2, 22050)
    (24000, 1, 48510)
    """
    return math.floor(round(seconds * rate, 8) + 0.5)


def segment_bounds(start_s: float, duration_s: float | None, rate: int, file_frames: int) -> tuple[int, int]:
    """``(first sample, number of samples)`` of a segment of a file of ``file_frames`` frames at ``rate``.

    The start and the length are rounded separately (as Lhotse does), so a segment's length does
    not depend on where it starts. A segment ending up to ``SEGMENT_END_SLACK_S`` past the file
    is cut at its end; further, or starting past the end, raises :class:`ClipError`.

    >>> segment_bounds(0.0, None, 16000, 48000), segment_bounds(1.0, 1.5, 16000, 48000)
    ((0, 48000), (16000, 24000))
    >>> segment_bounds(2.0, 1.02, 16000, 48000)
    (32000, 16000)
    """
    start = seconds_to_samples(start_s, rate)
    if start >= file_frames:
        raise ClipError(f"segment starts at {start_s:g} s, past the end of the {file_frames / rate:g} s file")
    if duration_s is None:
        return start, file_frames - start
    wanted = seconds_to_samples(duration_s, rate)
    overshoot = start + wanted - file_frames
    if overshoot > seconds_to_samples(SEGMENT_END_SLACK_S, rate):
        raise ClipError(
            f"segment ends at {start_s + duration_s:g} s but the file is only {file_frames / rate:g} s long; "
            "fix the manifest's start/end (or duration)"
        )
    return start, min(wanted, file_frames - start)


def _header(clip: Clip) -> soundfile._SoundFileInfo:
    if clip.problem is not None:
        raise ClipError(clip.problem, stage="manifest")
    if not clip.pipe and not os.path.isfile(clip.path):
        raise ClipError(f"file not found: {clip.path} (relative paths are read from the working directory)")
    try:
        return soundfile.info(audio_source(clip))
    except (RuntimeError, OSError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise ClipError(f"soundfile cannot read {clip.path}: {err}") from err


def _channel_count(clip: Clip, file_channels: int) -> int:
    if clip.channels is None:
        return file_channels
    bad = [c for c in clip.channels if not 0 <= c < file_channels]
    if bad:
        raise ClipError(f"channel(s) {bad} asked for, but {clip.path} has {file_channels} channel(s)")
    return len(clip.channels)


def probe(clip: Clip, io: ContinuousAudioIO, decode: bool = False) -> ClipLength:
    """The clip's lengths from its file header (``decode=True`` or a header without a length: by decoding)."""
    info = _header(clip)
    frames = info.frames
    if decode or not 0 < frames < UNKNOWN_FRAMES:
        frames = _decoded_frames(clip)
    if frames == 0:
        raise ClipError(f"{clip.path} holds no samples (an empty file); drop it from the manifest")
    start, count = segment_bounds(clip.start_s, clip.duration_s, info.samplerate, frames)
    channels = _channel_count(clip, info.channels)
    shape_only = np.broadcast_to(np.zeros((), dtype=np.float32), (channels, count))  # no samples behind it
    try:
        rows = int(io.find_length((shape_only, info.samplerate)))  # the policy checks preprocess makes
    except ValueError as err:  # a rate, channel or duration the policy refuses, a clip too long for its encoder
        raise ClipError(str(err)) from err
    samples = resampled_length(count, info.samplerate, io.sample_rate)
    mel_frames = int(io.features.frames(samples))
    return ClipLength(clip.id, samples, mel_frames, rows, count / info.samplerate, info.samplerate, start, count,
                      channels)  # fmt: skip


def _decoded_frames(clip: Clip) -> int:
    try:
        with soundfile.SoundFile(audio_source(clip)) as handle:
            return sum(len(block) for block in handle.blocks(blocksize=1 << 16, dtype="float32"))
    except (RuntimeError, OSError) as err:
        raise ClipError(f"soundfile cannot decode {clip.path}: {err}") from err


def load(clip: Clip, length: ClipLength) -> tuple[np.ndarray, int]:
    """Decode the clip's samples as ``([C, N] float32, source rate)``: the ``N`` samples ``length`` counted."""
    try:
        samples, rate = soundfile.read(audio_source(clip), frames=length.source_samples, start=length.source_start,
                                       dtype="float32", always_2d=True)  # fmt: skip
    except (RuntimeError, OSError) as err:
        raise ClipError(f"soundfile cannot decode {clip.path}: {err}", stage="decode") from err
    if samples.shape[0] != length.source_samples:
        raise ClipError(
            f"{clip.path} holds fewer samples than its header says ({samples.shape[0]} of {length.source_samples} "
            "from the segment's start): the file is truncated; re-encode it, or run with decode_lengths=true",
            stage="decode",
        )
    wav = samples.T if clip.channels is None else samples.T[list(clip.channels)]
    return np.ascontiguousarray(wav), rate


def error_record(clip: Clip, err: BaseException, stage: str | None = None) -> dict[str, Any]:
    """One ``errors.jsonl`` line: the clip, the stage that failed, the error and the manifest line."""
    stage = stage or getattr(err, "stage", "probe")
    return {"id": clip.id, "path": clip.path, "stage": stage, "error": f"{type(err).__name__}: {err}",
            "where": clip.where}  # fmt: skip
