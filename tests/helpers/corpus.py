"""A small corpus written with soundfile into a folder (extract tests), and the tiny encoder's arguments."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from contaudio.extract import Clip, read_manifest
from helpers.audio import noise
from helpers.checkpoints import TINY_QWEN_OMNI

TINY_KWARGS = {"encoder_hf_model_tag": TINY_QWEN_OMNI, "weights": "random", "dtype": "float32", "device": "cpu"}
# (file, seconds, rate, channels, subtype): rates and layouts preprocess must resample and downmix
FILES = (
    ("a.wav", 2.3, 16000, 1, "PCM_16"),
    ("b.flac", 1.1, 22050, 2, "PCM_16"),
    ("c.wav", 3.05, 44100, 1, "FLOAT"),
    ("sub/d.wav", 0.9, 16000, 1, "PCM_16"),
    ("sub/e.flac", 1.7, 8000, 1, "PCM_16"),
    ("f.wav", 0.012, 16000, 1, "PCM_16"),  # 192 samples: 2 mel frames, 0 rows
)


@dataclass(frozen=True)
class Corpus:
    root: Path
    manifest: Path  # JSONL: every file, one segment of c.wav, and three clips that cannot be read

    def clips(self) -> list[Clip]:
        return read_manifest(self.manifest)

    @property
    def good_ids(self) -> list[str]:
        return [c.id for c in self.clips() if c.id not in BAD_IDS]


BAD_IDS = ("missing", "garbage", "past_end")


def write_corpus(root: Path, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    lines = []
    for name, seconds, rate, channels, subtype in FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        samples = np.stack([noise(rng, int(seconds * rate)) for _ in range(channels)], axis=1)
        soundfile.write(path, samples, rate, subtype=subtype)
        lines.append({"id": Path(name).with_suffix("").as_posix(), "path": str(path)})
    lines.append({"id": "c_seg", "path": str(root / "c.wav"), "start": 0.5, "end": 1.75})
    (root / "garbage.wav").write_bytes(b"RIFF not really a wave file")
    lines += [
        {"id": "missing", "path": str(root / "nowhere.wav")},
        {"id": "garbage", "path": str(root / "garbage.wav")},
        {"id": "past_end", "path": str(root / "a.wav"), "start": 5.0, "end": 6.0},
    ]
    manifest = root / "clips.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return Corpus(root, manifest)


def decoded(clip: Clip) -> tuple[np.ndarray, int]:
    """The clip's audio read the plain way (whole file with soundfile, then cut): ``([C, N], rate)``."""
    samples, rate = soundfile.read(clip.path, dtype="float32", always_2d=True)
    start = round(clip.start_s * rate)
    stop = len(samples) if clip.duration_s is None else start + round(clip.duration_s * rate)
    return np.ascontiguousarray(samples[start:stop].T), rate
