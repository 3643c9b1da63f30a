"""Extract throughput (a benchmark, not a test): lengths mode on 10,000 files, features mode on the 7B tower.

python -m experiments.extract_bench                          # both parts, a few minutes (make extract-bench)
python -m experiments.extract_bench --part lengths --clips 10000 --decoded-clips 1000
python -m experiments.extract_bench --part features --audio-s 60 --workers 0 1 2
python -m experiments.extract_bench --part features --device cuda --audio-s 600 --clip-s 2 30 --max-frames 96000 \
    --max-clips 32 --workers auto                            # one GPU: 32 x 30 s batches

lengths: 10,000 files of 1-60 s (WAV at 16/22.05/44.1/48 kHz, mono and stereo, written as a header over a sparse
data section so they take no disk; a fifth as FLAC of silence), read by extract's lengths mode with 0 and 2
data-loader workers, against the plain way (decode each file with soundfile, then find_length((wav, sr))).
features: clips of 2-10 s (noise, 16 and 44.1 kHz) through extract's features mode on the full-size Qwen2.5-Omni-7B
tower (random weights, offline, dtype auto), end to end, against encode_batch alone on the same batches in the same
run (preprocessed and on the device beforehand), with peak RSS and the padding fraction of the batches formed.
host ceiling: the same run with encode_batch replaced by one that returns correctly shaped rows at once (decode +
resample + features + batching + the device-to-host copy + writing shards): the fastest encoder this host side
can feed, in audio-s/s and per core (workers + the main thread), the share of each stage, the bytes written per
second, and the cores the host side would need to feed ``--gpu-rate`` audio-s/s (an H200 on the 7B tower).
Writes extract-bench.json into --out and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
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
H200_RATE = 7400.0  # audio-s/s of encode_batch alone, 7B tower, bf16, 32 x 30 s batches, one H200
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


def features_corpus(root: Path, audio_s: float, clip_s: tuple[float, float], rng: np.random.Generator) -> list[Clip]:
    """Noise clips of ``clip_s`` seconds (uniform), a third at 44.1 kHz (resampled), as 16-bit WAV."""
    root.mkdir(parents=True, exist_ok=True)
    clips, total = [], 0.0
    while total < audio_s:
        seconds = float(rng.uniform(*clip_s))
        rate = 16000 if len(clips) % 3 else 44100
        path = root / f"{len(clips):04d}.wav"
        soundfile.write(path, (rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32), rate,
                        subtype="PCM_16")  # fmt: skip
        clips.append(Clip(path.stem, str(path)))
        total += seconds
    return clips


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode_only(io: ContinuousAudioIO, clips: list[Clip], options: ExtractOptions) -> dict[str, Any]:
    """encode_batch alone on the batches extract forms (preprocessed and on the device beforehand; one sync at the
    end, no copy back)."""
    lengths = [probe(clip, io) for clip in clips]
    batches = plan_batches([n.mel_frames for n in lengths], options.max_frames, options.max_clips)
    mels = [io.preprocess(load(clip, n))[1][1] for clip, n in zip(clips, lengths, strict=True)]
    ready = []
    for batch in batches:
        mel, frames = collate_mels([mels[i] for i in batch])
        ready.append((mel.to(io.device), frames))
    seconds = float("inf")
    for _ in range(2):  # the first pass warms the kernels for every batch shape; the best counts
        synchronize(io.device)
        start = time.perf_counter()
        with torch.inference_mode():
            for mel, frames in ready:
                io.encode_batch(mel, frames)
        synchronize(io.device)
        seconds = min(seconds, time.perf_counter() - start)
    audio_s = sum(n.duration_s for n in lengths)
    return {"audio_s": audio_s, "encode_s": seconds, "audio_s_per_s": audio_s / seconds, "batches": len(batches),
            "padding_fraction": padding_fraction([[lengths[i].mel_frames for i in b] for b in batches])}  # fmt: skip


@contextlib.contextmanager
def shaped_rows_encoder(io: ContinuousAudioIO) -> Iterator[None]:
    """Within the block, ``io.encode_batch`` returns correctly shaped rows at once (views of one zero buffer on the
    device, in the compute dtype): what is left of a run is its host side."""
    buffer = torch.zeros(0, io.feature_dim(), dtype=io.torch_dtype, device=io.device)

    def encode_batch(mel: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        nonlocal buffer
        rows = io.find_length(None, before_length=lengths.to("cpu")).tolist()  # host arithmetic
        if sum(rows) > buffer.shape[0]:
            buffer = torch.zeros(sum(rows), io.feature_dim(), dtype=io.torch_dtype, device=io.device)
        return list(buffer[: sum(rows)].split(rows))

    io.encode_batch = encode_batch  # an instance attribute hides the method
    try:
        yield
    finally:
        del io.encode_batch


def run_row(method: str, summary: dict[str, Any], workers: int, gpu_rate: float) -> dict[str, Any]:
    """One table row from a run's summary: rates, per core, stage shares and the cores ``gpu_rate`` would need."""
    audio_s, stages = summary["audio_hours"] * 3600, summary["stages"]
    cores = workers + 1  # the workers and the main thread (the writer thread mostly waits on the disk)
    host_s = (stages["decode_s"] + stages["preprocess_s"] + stages["collate_s"] + stages["encode_s"]
              + stages["copy_s"] + stages["write_s"])  # fmt: skip
    return {"method": method, "workers": workers, "audio_s": audio_s, "seconds": summary["wall_s"],
            "audio_s_per_s": summary["audio_s_per_s"], "loop_audio_s_per_s": summary["loop_audio_s_per_s"],
            "per_core": summary["loop_audio_s_per_s"] / cores, "first_batch_s": stages["first_batch_s"],
            **{f"{k}_share": v for k, v in stages["share_of_loop"].items()}, "workers_busy": stages["workers_busy"],
            "write_MB_per_s": (stages["write_bytes_per_s"] or 0) / 1e6, "batches": summary["batches"],
            "host_core_s_per_audio_s": host_s / audio_s, f"cores_for_{gpu_rate:.0f}": gpu_rate * host_s / audio_s,
            "padding_fraction": summary["padding_fraction"]}  # fmt: skip


def bench_features(
    root: Path, audio_s: float, clip_s: tuple[float, float], workers: list[int | None], tag: str, dtype: str,
    device: str, seed: int, batching: dict[str, int], gpu_rate: float, ceiling_only: bool = False,
) -> dict[str, Any]:  # fmt: skip
    clips = features_corpus(root / "clips", audio_s, clip_s, np.random.default_rng(seed))
    io_kwargs = {"encoder_hf_model_tag": tag, "weights": "random", "dtype": dtype, "device": device, "seed": seed}
    start = time.perf_counter()
    io = build_io(io_kwargs, "features", RankInfo())
    built = {"build_s": time.perf_counter() - start, "rss_after_build_mib": current_rss_mib()}
    options = {**batching, "shard_mb": 64.0, "progress": False}
    with torch.inference_mode():  # warm-up: first-call allocations stay out of every timing
        io.encode_batch(torch.zeros(2, 400, io.n_mels, device=io.device), torch.tensor([400, 300]))
    synchronize(io.device)
    alone = None if ceiling_only else encode_only(io, clips, ExtractOptions(out=root, **options))  # warms kernels
    rows = []
    for run, n in enumerate(workers):  # a run's own folders: a worker count given twice is measured twice
        name = f"{run}-{'auto' if n is None else n}"
        if not ceiling_only:
            summary = extract_with(io, clips, io_kwargs, ExtractOptions(out=root / f"features-{name}", workers=n,
                                                                        **options), RankInfo())  # fmt: skip
            rows.append(run_row(f"extract features, {summary['loader']['workers']} workers (end to end)", summary,
                                summary["loader"]["workers"], gpu_rate))  # fmt: skip
        with shaped_rows_encoder(io):
            ceiling = extract_with(io, clips, io_kwargs, ExtractOptions(out=root / f"ceiling-{name}", workers=n,
                                                                        **options), RankInfo())  # fmt: skip
        chosen = ceiling["loader"]["workers"]
        rows.append(run_row(f"host ceiling, {chosen} workers (encoder returns rows at once)", ceiling, chosen,
                            gpu_rate))  # fmt: skip
        for row in rows[-1 if ceiling_only else -2 :]:
            row["vs_ceiling"] = row["loop_audio_s_per_s"] / rows[-1]["loop_audio_s_per_s"]
    if alone is not None:
        add_encode_alone(rows, alone)
    return {"rows": rows, "clips": len(clips), "tag": tag, "dtype": io.dtype_choice.name,
            "dtype_reason": io.dtype_choice.reason, "device": str(io.device), "peak_rss_mib": peak_rss_mib(),
            "batching": batching, **built}  # fmt: skip


def add_encode_alone(rows: list[dict[str, Any]], alone: dict[str, Any]) -> None:
    """The encode_batch-alone row, and every other row's rate against it."""
    rows.append({"method": "encode_batch alone, same batches", "audio_s": alone["audio_s"],
                 "seconds": alone["encode_s"], "audio_s_per_s": alone["audio_s_per_s"],
                 "loop_audio_s_per_s": alone["audio_s_per_s"], "batches": alone["batches"],
                 "padding_fraction": alone["padding_fraction"]})  # fmt: skip
    for row in rows[:-1]:
        row["vs_encode_alone"] = row["audio_s_per_s"] / alone["audio_s_per_s"]
        row["loop_vs_encode_alone"] = row["loop_audio_s_per_s"] / alone["audio_s_per_s"]


def workers_arg(text: str) -> int | None:
    return None if text == "auto" else int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["lengths", "features", "both"], default="both")
    parser.add_argument("--clips", type=int, default=10_000, help="lengths: files to generate")
    parser.add_argument("--decoded-clips", type=int, default=1000, help="lengths: files the decoding baseline reads")
    parser.add_argument("--repeats", type=int, default=3, help="lengths: runs per setting (median and best)")
    parser.add_argument("--audio-s", type=float, default=60.0, help="features: seconds of audio to encode")
    parser.add_argument("--clip-s", type=float, nargs=2, default=(2.0, 10.0), metavar=("MIN", "MAX"),
                        help="features: clip durations, uniform between MIN and MAX seconds")  # fmt: skip
    parser.add_argument("--workers", type=workers_arg, nargs="+", default=[None],
                        help="features: data-loader workers (default: auto, extract's default)")  # fmt: skip
    parser.add_argument("--tag", default=TAG, help="features: the encoder (contaudio/tiny-qwen2.5-omni: the host's"
                        " own ceiling matters most)")  # fmt: skip
    parser.add_argument("--max-frames", type=int, default=3000, help="features: padded mel frames per batch")
    parser.add_argument("--max-clips", type=int, default=16, help="features: clips per batch")
    parser.add_argument("--gpu-rate", type=float, default=H200_RATE, help="features: the encoder rate (audio-s/s) "
                        "the host side should feed; the table says how many cores that needs")  # fmt: skip
    parser.add_argument("--dtype", default="auto", help="features: compute dtype (auto: bf16 where native)")
    parser.add_argument("--device", default="cpu", help="features: cpu, cuda or cuda:N")
    parser.add_argument("--ceiling-only", action="store_true", help="features: only the host ceiling (no encoder "
                        "runs; on any machine, with the tower's shapes)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process (the encoder "
                        "on a CPU; default: torch's)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/extract_bench"), help="where the JSON record goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"experiment": "extract_bench", "args": {k: str(v) for k, v in vars(args).items()}}
    scratch = Path(tempfile.mkdtemp(prefix="contaudio-extract-bench-"))
    try:
        if args.part in ("lengths", "both"):
            record["lengths"] = bench_lengths(scratch, args.clips, args.decoded_clips, args.repeats, args.seed)
            print(f"\nlengths mode, {args.clips} files of 1-60 s\n{markdown_table(record['lengths'])}")
        if args.part in ("features", "both"):
            batching = {"max_frames": args.max_frames, "max_clips": args.max_clips}
            record["features"] = bench_features(scratch, args.audio_s, tuple(args.clip_s), args.workers,
                                                args.tag, args.dtype, args.device, args.seed, batching,
                                                args.gpu_rate, args.ceiling_only)  # fmt: skip
            f = record["features"]
            print(f"\nfeatures mode, {f['tag']} on {f['device']} ({f['dtype']}: {f['dtype_reason']}), {f['clips']} "
                  f"clips of {args.clip_s[0]:g}-{args.clip_s[1]:g} s, batches <= {args.max_clips} clips and "
                  f"{args.max_frames} frames, peak RSS "
                  f"{f['peak_rss_mib']:.0f} MiB (after build {f['rss_after_build_mib']:.0f})\n"
                  f"{markdown_table(f['rows'])}")  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record["environment"] = environment()
    print(f"record: {write_record(args.out, record, 'extract-bench.json')}")


if __name__ == "__main__":
    main()
