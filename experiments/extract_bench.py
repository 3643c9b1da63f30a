"""Extract throughput (a benchmark, not a test): lengths mode on 10,000 files, features mode on the 7B tower.

python -m experiments.extract_bench                          # both parts, a few minutes (make extract-bench)
python -m experiments.extract_bench --part lengths --clips 10000 --decoded-clips 1000
python -m experiments.extract_bench --part features --audio-s 60 --workers 0 1 2

lengths: 10,000 files of 1-60 s (WAV at 16/22.05/44.1/48 kHz, mono and stereo, written as a header over a sparse
data section so they take no disk; a fifth as FLAC of silence), read by extract's lengths mode with 0 and 2
data-loader workers, against the plain way (decode each file with soundfile, then find_length((wav, sr))).
features: clips of 2-10 s (noise, 16 and 44.1 kHz) through extract's features mode on the full-size Qwen2.5-Omni-7B
tower (random weights, offline, dtype auto), end to end, against encode_batch alone on the same batches in the same
run (preprocessed beforehand), with peak RSS and the padding fraction of the batches formed.
Writes extract-bench.json into --out and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from contaudio import ContinuousAudioIO
from contaudio.collate import collate_mels
from contaudio.extract import Clip, ExtractOptions, RankInfo
from contaudio.extract.batching import padding_fraction, plan_batches
from contaudio.extract.probe import load, probe
from contaudio.extract.run import build_io, extract_with, peak_rss_mib
from contaudio.tracking import environment, write_record
from experiments.common import current_rss_mib, markdown_table

log = logging.getLogger("extract_bench")

TAG = "Qwen/Qwen2.5-Omni-7B"
WAV_RATES = (16000, 22050, 44100, 48000)
FLAC_SHARE = 5  # every 5th lengths clip is a FLAC
PCM16_BYTES = 2
WAV_HEADER = 44  # canonical RIFF/WAVE header: RIFF, fmt (16 bytes) and data chunk headers


def write_sparse_wav(path: Path, frames: int, rate: int, channels: int) -> None:
    """A 16-bit PCM WAV of ``frames`` zero frames: a 44-byte header and a hole (no disk blocks, reads as zeros)."""
    data = frames * channels * PCM16_BYTES
    header = b"RIFF" + struct.pack("<I", WAV_HEADER - 8 + data) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * channels * PCM16_BYTES, channels * PCM16_BYTES, 8 * PCM16_BYTES
    ) + b"data" + struct.pack("<I", data)  # fmt: skip
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(WAV_HEADER + data)


def lengths_corpus(root: Path, count: int, rng: np.random.Generator) -> list[Clip]:
    root.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        seconds = rng.uniform(1.0, 60.0)
        if i % FLAC_SHARE == 0:
            path = root / f"{i:05d}.flac"
            soundfile.write(path, np.zeros(int(seconds * 16000), np.int16), 16000)
        else:
            path = root / f"{i:05d}.wav"
            rate = int(rng.choice(WAV_RATES))
            write_sparse_wav(path, int(seconds * rate), rate, int(rng.integers(1, 3)))
        clips.append(Clip(f"{i:05d}", str(path)))
    return clips


def bench_lengths(root: Path, count: int, decoded_count: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    """clips/s of lengths mode (0 and 2 workers; median and best of ``repeats``) and of decode + find_length."""
    clips = lengths_corpus(root / "audio", count, np.random.default_rng(seed))
    io_kwargs = {"encoder_hf_model_tag": TAG, "weights": "random"}
    io = build_io(io_kwargs, "lengths", RankInfo())
    rows = []
    for workers in (0, 2):
        options = ExtractOptions(out=root / f"lengths-{workers}", mode="lengths", workers=workers, progress=False)
        runs = [extract_with(io, clips, io_kwargs, options, RankInfo()) for _ in range(repeats)]
        seconds = sorted(run["wall_s"] for run in runs)
        rows.append({"method": f"extract lengths, {workers} workers (headers)", "clips": count,
                     "seconds": float(np.median(seconds)), "clips_per_s": count / float(np.median(seconds)),
                     "best_clips_per_s": count / seconds[0], "audio_hours": runs[0]["audio_hours"]})  # fmt: skip
    sample = clips[:decoded_count]
    start = time.perf_counter()
    for clip in sample:
        samples, rate = soundfile.read(clip.path, dtype="float32", always_2d=True)
        io.find_length((samples.T, rate))
    seconds = time.perf_counter() - start
    rows.append({"method": "soundfile.read + find_length((wav, sr))", "clips": len(sample), "seconds": seconds,
                 "clips_per_s": len(sample) / seconds})  # fmt: skip
    return rows


def features_corpus(root: Path, audio_s: float, rng: np.random.Generator) -> list[Clip]:
    root.mkdir(parents=True, exist_ok=True)
    clips, total = [], 0.0
    while total < audio_s:
        seconds = float(rng.uniform(2.0, 10.0))
        rate = 16000 if len(clips) % 3 else 44100
        path = root / f"{len(clips):03d}.wav"
        soundfile.write(path, (rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32), rate)
        clips.append(Clip(path.stem, str(path)))
        total += seconds
    return clips


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode_only(io: ContinuousAudioIO, clips: list[Clip], options: ExtractOptions) -> dict[str, Any]:
    """encode_batch alone on the batches extract forms (preprocessed beforehand, in this process)."""
    lengths = [probe(clip, io) for clip in clips]
    batches = plan_batches([n.mel_frames for n in lengths], options.max_frames, options.max_clips)
    mels = [io.preprocess(load(clip, n))[1][1] for clip, n in zip(clips, lengths, strict=True)]
    seconds = 0.0
    with torch.inference_mode():
        for batch in batches:
            mel, frames = collate_mels([mels[i] for i in batch])
            start = time.perf_counter()
            [f.to("cpu") for f in io.encode_batch(mel, frames)]  # as extract does: the features end on the host
            seconds += time.perf_counter() - start
    audio_s = sum(n.duration_s for n in lengths)
    return {"audio_s": audio_s, "encode_s": seconds, "audio_s_per_s": audio_s / seconds, "batches": len(batches),
            "padding_fraction": padding_fraction([[lengths[i].mel_frames for i in b] for b in batches])}  # fmt: skip


def bench_features(
    root: Path, audio_s: float, workers: list[int], dtype: str, device: str, seed: int
) -> dict[str, Any]:
    clips = features_corpus(root / "clips", audio_s, np.random.default_rng(seed))
    io_kwargs = {"encoder_hf_model_tag": TAG, "weights": "random", "dtype": dtype, "device": device, "seed": seed}
    start = time.perf_counter()
    io = build_io(io_kwargs, "features", RankInfo())
    built = {"build_s": time.perf_counter() - start, "rss_after_build_mib": current_rss_mib()}
    options = {"max_frames": 3000, "max_clips": 16, "shard_mb": 4.0, "progress": False}
    with torch.inference_mode():  # warm-up: first-call allocations stay out of both timings
        io.encode_batch(torch.zeros(2, 400, io.n_mels), torch.tensor([400, 300]))
    synchronize(io.device)
    rows = []
    for n in workers:
        summary = extract_with(io, clips, io_kwargs, ExtractOptions(out=root / f"features-{n}", workers=n,
                                                                    **options), RankInfo())  # fmt: skip
        rows.append({"method": f"extract features, {n} workers (end to end)", "audio_s": summary["audio_hours"] * 3600,
                     "seconds": summary["wall_s"], "audio_s_per_s": summary["audio_s_per_s"],
                     "loop_audio_s_per_s": summary["loop_audio_s_per_s"], "encode_s": summary["encode_s"],
                     "wait_for_data_s": summary["wait_for_data_s"], "batches": summary["batches"],
                     "encode_share": summary["encode_s"] / summary["wall_s"], "shards": summary["shards_written"],
                     "padding_fraction": summary["padding_fraction"]})  # fmt: skip
    alone = encode_only(io, clips, ExtractOptions(out=root, **options))
    rows.append({"method": "encode_batch alone, same batches", "audio_s": alone["audio_s"],
                 "seconds": alone["encode_s"], "audio_s_per_s": alone["audio_s_per_s"], "batches": alone["batches"],
                 "padding_fraction": alone["padding_fraction"]})  # fmt: skip
    for row in rows[:-1]:
        row["vs_encode_alone"] = row["audio_s_per_s"] / alone["audio_s_per_s"]
    return {"rows": rows, "clips": len(clips), "dtype": io.dtype_choice.name, "dtype_reason": io.dtype_choice.reason,
            "peak_rss_mib": peak_rss_mib(), **built}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["lengths", "features", "both"], default="both")
    parser.add_argument("--clips", type=int, default=10_000, help="lengths: files to generate")
    parser.add_argument("--decoded-clips", type=int, default=1000, help="lengths: files the decoding baseline reads")
    parser.add_argument("--repeats", type=int, default=3, help="lengths: runs per setting (median and best)")
    parser.add_argument("--audio-s", type=float, default=60.0, help="features: seconds of audio to encode")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="features: data-loader workers")
    parser.add_argument("--dtype", default="auto", help="features: compute dtype (auto: bf16 where native)")
    parser.add_argument("--device", default="cpu", help="features: cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/extract_bench"), help="where the JSON record goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    record: dict[str, Any] = {"experiment": "extract_bench", "args": {k: str(v) for k, v in vars(args).items()}}
    scratch = Path(tempfile.mkdtemp(prefix="contaudio-extract-bench-"))
    try:
        if args.part in ("lengths", "both"):
            record["lengths"] = bench_lengths(scratch, args.clips, args.decoded_clips, args.repeats, args.seed)
            print(f"\nlengths mode, {args.clips} files of 1-60 s\n{markdown_table(record['lengths'])}")
        if args.part in ("features", "both"):
            record["features"] = bench_features(scratch, args.audio_s, args.workers, args.dtype, args.device, args.seed)
            f = record["features"]
            print(f"\nfeatures mode, {TAG} ({f['dtype']}: {f['dtype_reason']}), {f['clips']} clips, peak RSS "
                  f"{f['peak_rss_mib']:.0f} MiB (after build {f['rss_after_build_mib']:.0f})\n"
                  f"{markdown_table(f['rows'])}")  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record["environment"] = environment()
    print(f"record: {write_record(args.out, record, 'extract-bench.json')}")


if __name__ == "__main__":
    main()
