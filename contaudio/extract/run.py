"""One extract job: this rank's slice of a manifest -> lengths JSONL, or feature shards + index.

lengths: file headers in data-loader workers -> ``find_length`` (no encoder, no decoding where the
header gives the length) -> ``lengths.jsonl`` (ESPnet's own stats: ``contaudio.integrations.espnet.stats``).

features: headers -> batches by length under a frame budget -> data-loader workers decode and
``preprocess`` each batch on ``copy_for_worker()`` copies -> ``encode_batch`` under
``inference_mode`` in this process -> one device-to-host copy per batch -> a writer thread splits the rows
per clip and publishes each shard atomically (:mod:`contaudio.extract.pipeline`). Clips in
finished shards (of this configuration) are skipped, and so are the clips those shards record as
undecodable (``retry_failed``: tried again, after every other clip), so a rerun plans exactly the
rest of the first run's plan and redoes only the shard that was open when the job died. Clips that
cannot be read go to ``errors.jsonl`` and the job goes on; the run fails when every clip (or more
than ``max_errors``) failed.

Every refusal (an output folder that is a file or cannot be written, a slice another process is
writing, another configuration, a tag that cannot be built) comes from :func:`open_output`, before
any encoder is built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import contaudio
from contaudio.collate import collate_mels
from contaudio.dtypes import DTYPES, dtype_name
from contaudio.encoders.loading import resolve
from contaudio.extract.batching import group_shards, padding_fraction, plan_batches
from contaudio.extract.lock import rank_lock
from contaudio.extract.manifests import Clip
from contaudio.extract.pipeline import (
    WRITE_QUEUE_SHARDS,
    BatchJob,
    BatchWriter,
    LoaderChoice,
    StageTimes,
    Streams,
    device_to_host,
)
from contaudio.extract.probe import CLIP_ERRORS, ClipError, ClipLength, error_record, load, probe
from contaudio.extract.progress import AudioProgress
from contaudio.extract.ranks import RankInfo, device_for_rank, rank_slice, resolve_rank
from contaudio.extract.shards import (
    RefusedError,
    check_output_folder,
    config_hash,
    done_ids,
    failed_records,
    json_line,
    next_seq,
    part_suffix,
    prepare_output,
    record_world_size,
    remove_temporary,
    shard_name,
    write_index,
    write_jsonl_atomic,
    write_text_atomic,
)
from contaudio.extract.store import FeatureStore
from contaudio.extract.verify import verify_store
from contaudio.io import ContinuousAudioIO

log = logging.getLogger(__name__)

Mode = Literal["lengths", "features"]
MODES = ("lengths", "features")
STORE_SAME = "same"  # store features in the compute dtype
PROBE_CHUNK = 128  # clips per data-loader item when reading headers (amortises the worker round trip)
BYTES_PER_MIB = 2**20
# ru_maxrss is KiB on Linux, bytes on macOS
MAXRSS_TO_MIB = 1 / 1024 if sys.platform != "darwin" else 1 / BYTES_PER_MIB


@dataclass(frozen=True)
class ExtractOptions:
    """How one extract job runs (the encoder and audio policy are the ``ContinuousAudioIO``'s).

    out: output folder (shared by every rank). mode: "lengths" or "features". workers: data-loader
    workers (0: this process; None, the default: min(8, cores per rank - 1), logged and recorded in
    summary.json). max_frames: padded mel frames per batch (clips x longest); max_clips: clips per batch.
    shard_mb: target shard size. store_dtype: "same" (the compute dtype), "bfloat16"/"bf16", "float16"/"fp16" or
    "float32"/"fp32". overwrite: replace an output of another
    configuration; allow_mixed: add beside it (clips are done only for the configuration that stored
    them). verify: clips to re-encode and compare after the run (every stored row count is checked
    whenever verify > 0). decode_lengths: count samples by decoding, not from headers. progress: a
    progress bar (a log line every 30 s without a terminal). max_errors: the run fails when more clips
    than this could not be used (None: only when every clip failed). retry_failed: try again the clips
    finished shards record as undecodable (planned after every other clip).
    """

    out: Path
    mode: Mode = "features"
    workers: int | None = None
    max_frames: int = 48_000
    max_clips: int = 64
    shard_mb: float = 512.0
    store_dtype: str = STORE_SAME
    overwrite: bool = False
    allow_mixed: bool = False
    verify: int = 0
    seed: int = 0
    decode_lengths: bool = False
    progress: bool = True
    max_errors: int | None = None
    retry_failed: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RefusedError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.store_dtype != STORE_SAME and self.store_dtype not in DTYPES:
            names = ", ".join(DTYPES)
            raise RefusedError(f"store_dtype must be {STORE_SAME!r} or one of {names}, got {self.store_dtype!r}")
        if (self.workers or 0) < 0 or self.verify < 0 or (self.max_errors or 0) < 0:
            raise RefusedError(f"workers, verify and max_errors must be >= 0, got {self.workers}, {self.verify}, "
                               f"{self.max_errors}")  # fmt: skip
        if not (math.isfinite(self.shard_mb) and self.shard_mb > 0) or self.max_frames < 1 or self.max_clips < 1:
            raise RefusedError(f"shard_mb must be a finite size > 0 and max_frames, max_clips >= 1, got "
                               f"{self.shard_mb}, {self.max_frames}, {self.max_clips}")  # fmt: skip
        if self.verify and self.mode != "features":
            raise RefusedError("--verify re-encodes stored features: use it with --mode features (extract.mode="
                               "features); lengths mode stores none")  # fmt: skip


def store_dtype(name: str, compute: torch.dtype) -> torch.dtype:
    """The dtype features are stored in: the compute dtype for ``"same"``."""
    return compute if name == STORE_SAME else DTYPES[name]


def feature_config(io: ContinuousAudioIO, io_kwargs: dict[str, Any], stored: torch.dtype) -> dict[str, Any]:
    """What decides the stored values (hashed into ``config_hash``): encoder, weights, dtypes, features, audio policy.

    Not the device or the attention kernel: they change values only within the dtype's tolerance.
    """
    weights = io_kwargs.get("weights", "pretrained")
    return {
        "tag": io.source.tag, "family": io.family.name, "weights": weights, "revision": io_kwargs.get("revision"),
        "seed": None if weights == "pretrained" else io_kwargs.get("seed", 0),
        "compute_dtype": dtype_name(io.torch_dtype), "store_dtype": dtype_name(stored), "dim": io.feature_dim(),
        "sample_rate": io.sample_rate, "hop_length": io.features.hop_length, "n_mels": io.n_mels,
        "resample": io.policy.resample, "multichannel": io.policy.multichannel, "normalize": io.policy.normalize,
        "max_duration_s": io.policy.max_duration_s, "long_clip": io.long_clip, "returns": io.returns,
        "features": repr(io.features),  # the featurizer and its every setting (frame rule, padding, ...)
    }  # fmt: skip


def error_verdict(clips: int, errors: int, max_errors: int | None) -> str | None:
    """Why a run fails on its unusable clips, or None: every clip failed (``max_errors`` None), or more than
    ``max_errors`` did.

    >>> error_verdict(148, 148, None), error_verdict(10, 3, None), error_verdict(10, 3, 2), error_verdict(0, 0, None)
    ('every clip failed (148 of 148)', None, '3 of 10 clips failed, more than max_errors=2', None)
    """
    if max_errors is None:
        return f"every clip failed ({errors} of {clips})" if clips and errors >= clips else None
    return f"{errors} of {clips} clips failed, more than max_errors={max_errors}" if errors > max_errors else None


def judge_errors(summary: dict[str, Any], errors: Path, max_errors: int | None) -> None:
    """Set the summary's ``passed`` (false when too many clips failed, with the reason in ``failure``)."""
    verdict = error_verdict(summary["clips"], summary["errors"], max_errors)
    summary["passed"] = verdict is None
    if verdict:
        summary["failure"] = (f"{verdict}: see {errors} (relative audio paths are read from the working "
                              "directory; --max-errors N accepts up to N)")  # fmt: skip


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_TO_MIB


def one_thread(_: int) -> None:
    """Data-loader worker init: preprocess is per clip and must not fight the encoder for cores."""
    torch.set_num_threads(1)


class ErrorLog:
    """``errors.jsonl`` of this run (rewritten: a rerun tries every failed clip again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.by_stage: dict[str, int] = {}
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed in close())

    def extend(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._handle.write(json_line(record))
            self.count += 1
            self.by_stage[record["stage"]] = self.by_stage.get(record["stage"], 0) + 1
        if records:
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()
        if self.count:
            log.warning("%d clip(s) could not be used (%s): see %s", self.count,
                        ", ".join(f"{k}: {v}" for k, v in sorted(self.by_stage.items())), self.path)  # fmt: skip


# ----------------------------------------------------------------------------- data-loader datasets


class ProbeChunks(Dataset):
    """Item k: the lengths (or error records) of clips ``k*chunk .. (k+1)*chunk``, from their headers."""

    def __init__(self, io: ContinuousAudioIO, clips: Sequence[Clip], decode: bool, chunk: int = PROBE_CHUNK) -> None:
        self.io, self.clips, self.decode, self.chunk = io, clips, decode, chunk

    def __len__(self) -> int:
        return -(-len(self.clips) // self.chunk)

    def __getitem__(self, index: int) -> list[ClipLength | dict[str, Any]]:
        results: list[ClipLength | dict[str, Any]] = []
        for clip in self.clips[index * self.chunk : (index + 1) * self.chunk]:
            try:
                results.append(probe(clip, self.io, self.decode))
            except CLIP_ERRORS as err:  # a clip that cannot be read: recorded, the job goes on
                results.append(error_record(clip, err))
        return results


class BatchData(Dataset):
    """Item b: planned batch b decoded, preprocessed and padded: ``{batch, indices, mel, lengths, empty, errors,
    times}``.

    ``empty``: the clips too short for one row (nothing to encode: stored as ``[0, D]``). ``times``: this worker's
    seconds decoding, preprocessing and collating the batch (:class:`StageTimes`).
    """

    def __init__(self, io: ContinuousAudioIO, todo: Sequence[tuple[Clip, ClipLength]], batches: list[list[int]]):
        self.io, self.todo, self.batches = io, todo, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        indices, mels, empty, errors = [], [], [], []
        decode_s = preprocess_s = 0.0
        for i in self.batches[index]:
            clip, length = self.todo[i]
            try:
                began = time.perf_counter()
                wav, rate = load(clip, length)
                decoded = time.perf_counter()
                decode_s += decoded - began
                _, (rows, mel), _ = self.io.preprocess((wav, rate))
                preprocess_s += time.perf_counter() - decoded
                if rows != length.rows:  # header and decoded audio disagree: never store what lengths did not count
                    raise ClipError(f"preprocess gives {rows} rows, the header gave {length.rows}", stage="decode")
            except CLIP_ERRORS as err:  # this clip cannot be read; a bug elsewhere stops the job
                errors.append(error_record(clip, err, getattr(err, "stage", "decode")))
                continue
            if rows == 0:
                empty.append(i)
            else:
                indices.append(i)
                mels.append(mel)
        began = time.perf_counter()
        mel, lengths = collate_mels(mels) if mels else (None, None)
        times = {"decode_s": decode_s, "preprocess_s": preprocess_s, "collate_s": time.perf_counter() - began}
        return {"batch": index, "indices": indices, "mel": mel, "lengths": lengths, "empty": empty, "errors": errors,
                "times": times}  # fmt: skip


def probe_all(
    io: ContinuousAudioIO, clips: Sequence[Clip], workers: int, decode: bool, progress: bool
) -> tuple[list[ClipLength | None], list[dict[str, Any]]]:
    """Lengths of every clip in order (None where it failed) and the error records."""
    loader = DataLoader(ProbeChunks(io.copy_for_worker(), clips, decode), batch_size=None, num_workers=workers,
                        worker_init_fn=one_thread if workers else None)  # fmt: skip
    lengths: list[ClipLength | None] = []
    errors: list[dict[str, Any]] = []
    bar = tqdm(total=len(clips), desc="lengths", unit="clip", disable=not (progress and sys.stderr.isatty()))
    for chunk in loader:
        for result in chunk:
            if isinstance(result, ClipLength):
                lengths.append(result)
            else:
                lengths.append(None)
                errors.append(result)
        bar.update(len(chunk))
    bar.close()
    return lengths, errors


# ----------------------------------------------------------------------------- the two modes


def extract_lengths(io: ContinuousAudioIO, clips: Sequence[Clip], options: ExtractOptions, rank: RankInfo) -> dict:
    """lengths.jsonl for this rank's clips; returns the summary."""
    start = time.perf_counter()
    out = options.out
    suffix = part_suffix(rank.rank, rank.world_size)
    mine = rank_slice(clips, rank.rank, rank.world_size)
    errors = ErrorLog(out / f"errors{suffix}.jsonl")
    loader = LoaderChoice.resolve(options.workers, torch.device("cpu"))
    try:
        lengths, failed = probe_all(io, mine, loader.workers, options.decode_lengths, options.progress)
        errors.extend(failed)
    finally:
        errors.close()
    found = [length for length in lengths if length is not None]
    write_jsonl_atomic(out / f"lengths{suffix}.jsonl", (length.record() for length in found))
    wall = time.perf_counter() - start
    audio_s = sum(length.duration_s for length in found)
    summary = {
        "mode": "lengths", "rank": rank.rank, "world_size": rank.world_size, "clips": len(mine),
        "clips_ok": len(found), "errors": errors.count, "errors_by_stage": errors.by_stage,
        "audio_hours": audio_s / 3600, "rows": sum(length.rows for length in found), "wall_s": wall,
        "clips_per_s": len(mine) / wall if wall else None, "workers": loader.workers, "out": str(out),
    }  # fmt: skip
    judge_errors(summary, errors.path, options.max_errors)
    write_text_atomic(out / f"summary{suffix}.json", json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass(frozen=True)
class Plan:
    """What a run encodes: the clips not stored yet, their batches (indices into ``todo``), and per shard its
    file name and batches (consecutive)."""

    todo: list[tuple[Clip, ClipLength]]
    batches: list[list[int]]
    shards: list[tuple[str, list[int]]]

    def padding_fraction(self) -> float:
        return padding_fraction([[self.todo[i][1].mel_frames for i in b] for b in self.batches])


def plan_run(
    todo: list[tuple[Clip, ClipLength]],
    options: ExtractOptions,
    row_bytes: int,
    rank: int,
    first_seq: int,
    retry: Sequence[tuple[Clip, ClipLength]] = (),
) -> Plan:
    """Batches by length under the frame budget, grouped into shards of about ``shard_mb``, numbered from
    ``first_seq`` without gaps; the ``retry`` clips get batches and shards of their own after all of ``todo``'s,
    so retrying them moves no other clip."""
    clips = [*todo, *retry]
    batches: list[list[int]] = []
    shards: list[tuple[str, list[int]]] = []
    for offset, part in ((0, list(todo)), (len(todo), list(retry))):
        part_batches = plan_batches([n.mel_frames for _, n in part], options.max_frames, options.max_clips)
        sizes = [sum(part[i][1].rows for i in b) * row_bytes for b in part_batches]
        for group in group_shards(sizes, int(options.shard_mb * BYTES_PER_MIB)) if part else []:
            shards.append((shard_name(rank, first_seq + len(shards)), [len(batches) + g for g in group]))
        batches += [[offset + i for i in b] for b in part_batches]
    return Plan(clips, batches, shards)


def extract_features(
    io: ContinuousAudioIO, clips: Sequence[Clip], options: ExtractOptions, rank: RankInfo, digest: str
) -> dict:
    """Feature shards + index.jsonl for this rank's clips (skipping clips already in finished shards of config
    hash ``digest``); the output folder was checked and locked by :func:`open_output`."""
    start = time.perf_counter()
    out = options.out
    stored = store_dtype(options.store_dtype, io.torch_dtype)
    suffix = part_suffix(rank.rank, rank.world_size)
    mine = rank_slice(clips, rank.rank, rank.world_size)
    errors = ErrorLog(out / f"errors{suffix}.jsonl")
    times = StageTimes()
    loader = LoaderChoice.resolve(options.workers, io.device)
    log.info("data loader: %d workers (%s), prefetch_factor %s, pin_memory %s", loader.workers, loader.reason,
             loader.prefetch_factor, loader.pin_memory)  # fmt: skip
    try:
        lengths, failed = probe_all(io, mine, loader.workers, options.decode_lengths, options.progress)
        errors.extend(failed)
        ids = {c.id for c in mine}
        done = done_ids(out, digest) & ids
        before = {i: r for i, r in failed_records(out, digest).items() if i in ids}  # undecodable in a finished shard
        probed = [(c, n) for c, n in zip(mine, lengths, strict=True) if n is not None and c.id not in done]
        todo = [(c, n) for c, n in probed if c.id not in before]
        retry = [(c, n) for c, n in probed if c.id in before] if options.retry_failed else []
        if not options.retry_failed:  # still failed: reported again, from the shard that recorded it
            errors.extend([before[c.id] for c, _ in probed if c.id in before])
        first_seq = next_seq((p.name for p in out.iterdir()), rank.rank)
        plan = plan_run(todo, options, io.feature_dim() * stored.itemsize, rank.rank, first_seq, retry)
        log.info("%s: %d clips, %d already stored, %d failed before%s, %d to encode in %d batches and %d shards",
                 rank.describe(), len(mine), len(done), len(before), " (retried)" if options.retry_failed else "",
                 len(plan.todo), len(plan.batches), len(plan.shards))  # fmt: skip
        entry_base = {"dim": io.feature_dim(), "dtype": dtype_name(stored), "tag": io.source.tag,
                      "family": io.family.name, "contaudio_version": contaudio.__version__,
                      "config_hash": digest}  # fmt: skip
        loop_start = time.perf_counter()
        written, decode_failed = encode_shards(io, plan, options, stored, entry_base, errors, times, loader,
                                               rank.describe())  # fmt: skip
        loop_s = time.perf_counter() - loop_start
        write_index([out], out)
    finally:
        errors.close()
    audio_s = sum(n.duration_s for _, n in plan.todo)
    wall = time.perf_counter() - start
    summary = {
        "mode": "features", "rank": rank.rank, "world_size": rank.world_size, "config_hash": digest,
        "clips": len(mine), "clips_skipped_done": len(done), "clips_failed_before": len(before),
        "clips_retried": len(retry), "clips_encoded": len(plan.todo) - decode_failed,
        "clips_ok": len(done) + len(plan.todo) - decode_failed,
        "errors": errors.count, "errors_by_stage": errors.by_stage, "shards_written": len(written),
        "batches": len(plan.batches), "audio_hours": audio_s / 3600, "wall_s": wall, "loop_s": loop_s,
        "audio_s_per_s": audio_s / wall if wall else None, "loop_audio_s_per_s": audio_s / loop_s if loop_s else None,
        "encode_s": times.encode_s, "encode_audio_s_per_s": audio_s / times.encode_s if times.encode_s else None,
        "wait_for_data_s": times.wait_s, "padding_fraction": plan.padding_fraction(),
        "peak_rss_mib": peak_rss_mib(), "store_dtype": dtype_name(stored),
        "bytes_written": times.bytes_written, "write_bytes_per_s": times.bytes_written / loop_s if loop_s else None,
        "loader": loader.record(), "stages": times.record(loop_s, loader.workers), "out": str(out),
    }  # fmt: skip
    judge_errors(summary, errors.path, options.max_errors)
    if options.verify:
        store = FeatureStore(out, config_hash=digest)
        by_id = {c.id: c for c in mine}
        probed_lengths = {n.id: n for n in lengths if n is not None}
        summary["verify"] = verify_store(store, io, by_id, probed_lengths, options.verify, options.seed).summary()
        summary["passed"] = summary["passed"] and summary["verify"]["passed"]
    write_text_atomic(out / f"summary{suffix}.json", json.dumps(summary, indent=2) + "\n")
    return summary


def encode_shards(
    io: ContinuousAudioIO,
    plan: Plan,
    options: ExtractOptions,
    stored: torch.dtype,
    entry_base: dict[str, Any],
    errors: ErrorLog,
    times: StageTimes,
    loader: LoaderChoice,
    desc: str,
) -> tuple[list[Path], int]:
    """The loop: batches from the workers (the next one uploaded ahead) -> encode_batch -> one device-to-host copy
    per batch -> the writer thread, which splits the rows per clip and writes each shard after its last batch.

    Nothing here waits for the device: row counts come from the length rule (on the host), and the writer thread
    waits for each copy. Every planned shard is written, even one whose clips all failed (it records them): shard
    numbers have no gaps, and a rerun knows those clips were tried. Returns the shards written and how many clips
    failed.
    """
    batches = DataLoader(BatchData(io.copy_for_worker(), plan.todo, plan.batches), batch_size=None,
                         num_workers=loader.workers, worker_init_fn=one_thread if loader.workers else None,
                         pin_memory=loader.pin_memory, prefetch_factor=loader.prefetch_factor)  # fmt: skip
    shard_after = {group[-1]: name for name, group in plan.shards}  # the batch that completes each shard
    per_shard = max((len(group) for _, group in plan.shards), default=1)
    writer = BatchWriter(options.out, times, max_pending=WRITE_QUEUE_SHARDS * per_shard)
    streams = Streams(io.device)
    progress = AudioProgress(sum(n.duration_s for _, n in plan.todo), f"features {desc}", options.progress)
    dim, config = io.feature_dim(), entry_base["config_hash"]
    failed_total = 0

    def fetch(items: Iterator[dict[str, Any]], first: bool) -> dict[str, Any] | None:
        """The next batch, its mel already on its way to the device."""
        began = time.perf_counter()
        item = next(items, None)
        waited = time.perf_counter() - began
        if first:
            times.first_batch_s += waited
        else:
            times.wait_s += waited
        if item is not None:
            item["mel"] = streams.to_device(item["mel"])
        return item

    try:
        items = iter(batches)
        item = fetch(items, first=True)
        while item is not None:
            times.add_worker(item)
            errors.extend(item["errors"])
            failed_total += len(item["errors"])
            host = None
            if item["mel"] is not None:
                began = time.perf_counter()
                with torch.inference_mode():
                    span = streams.before_encode()
                    encoded = io.encode_batch(item["mel"], item["lengths"])
                    copied = time.perf_counter()
                    host = device_to_host(encoded, stored, streams, span)
                times.encode_s += copied - began
                times.copy_s += time.perf_counter() - copied
            clips = []
            for i in item["empty"] + item["indices"]:  # the writer's key order: the empty clips first
                clip, length = plan.todo[i]
                rows = 0 if i in item["empty"] else length.rows  # BatchData checked preprocess's rows against it
                clips.append(({"id": clip.id, **entry_base, "samples": length.samples, "mel_frames": length.mel_frames,
                               "duration_s": round(length.duration_s, 6)}, rows))  # fmt: skip
            failed = [{**record, "config_hash": config} for record in item["errors"]]
            writer.submit(BatchJob(host, clips, failed, shard_after.get(item["batch"]), stored, dim))
            progress.update(sum(plan.todo[i][1].duration_s for i in plan.batches[item["batch"]]))
            item = fetch(items, first=False)
    finally:
        progress.close()
        written = writer.close()
    return written, failed_total


# ----------------------------------------------------------------------------- the job


def build_io(io_kwargs: dict[str, Any], mode: Mode, rank: RankInfo) -> ContinuousAudioIO:
    """The ``ContinuousAudioIO`` a mode needs: lengths builds no encoder and stays on the CPU; features runs on
    this rank's GPU under torchrun (``device="cuda"`` -> ``cuda:<LOCAL_RANK>``)."""
    if mode == "lengths":
        return ContinuousAudioIO(
            **{**io_kwargs, "device": "cpu", "attn_implementation": None, "cuda_graphs": False}, skip_init_encoder=True
        )
    device = device_for_rank(io_kwargs.get("device", "cpu"), rank.local_rank)
    return ContinuousAudioIO(**{**io_kwargs, "device": device})


def front_end(io_kwargs: dict[str, Any], rank: RankInfo) -> ContinuousAudioIO:
    """The features mode's IO without its encoder (what decides the configuration hash), built in a moment; a tag,
    weights or dtype that cannot be built is refused here, before any encoder is."""
    kwargs = {**io_kwargs, "device": device_for_rank(io_kwargs.get("device", "cpu"), rank.local_rank)}
    try:
        if kwargs.get("weights", "pretrained") == "pretrained" and "encoder_hf_model_tag" in kwargs:
            resolve(kwargs["encoder_hf_model_tag"], "pretrained", kwargs.get("revision"))  # reads no weights
        front = ContinuousAudioIO(**kwargs, skip_init_encoder=True)
    except (ValueError, ImportError, FileNotFoundError) as err:  # a refused tag/weights/dtype/device, or no config
        raise RefusedError(f"cannot build the encoder: {err}") from err
    if front.family.leading_shape:
        raise RefusedError(
            f"extract stores one [T, D] matrix per clip; returns={front.returns!r} gives "
            f"[{len(front.family.leading_shape)} more dims, T, D]: use returns 'lm' or 'tower' (--returns), or "
            "ContinuousAudioIO(returns='hidden_states', layers=[...]) in your own loop"
        )
    return front


@contextlib.contextmanager
def open_output(
    io_kwargs: dict[str, Any], options: ExtractOptions, rank: RankInfo, io: ContinuousAudioIO | None = None
) -> Iterator[str | None]:
    """Every check on the output, before any encoder is built; yields the configuration hash (None in lengths mode).

    The folder must be a folder this process can write; this rank's slice is locked for the ``with`` block
    (another run on it is refused, naming it); features mode: the folder must take this configuration
    (``io``: an IO already built, else :func:`front_end`). Raises :class:`RefusedError` with the fix.
    """
    check_output_folder(options.out)
    with rank_lock(options.out, rank.rank, rank.world_size):
        if options.mode == "lengths":
            record_world_size(options.out, rank.world_size, contaudio.__version__)
            yield None
            return
        front = io if io is not None else front_end(io_kwargs, rank)
        config = feature_config(front, io_kwargs, store_dtype(options.store_dtype, front.torch_dtype))
        digest = prepare_output(options.out, config, contaudio.__version__, overwrite=options.overwrite,
                                allow_mixed=options.allow_mixed, world_size=rank.world_size)  # fmt: skip
        remove_temporary(options.out, rank.rank)  # safe: the lock says no run of this rank is writing
        yield digest


def extract_opened(
    io: ContinuousAudioIO,
    clips: Sequence[Clip],
    io_kwargs: dict[str, Any],
    options: ExtractOptions,
    rank: RankInfo,
    digest: str | None,
) -> dict:
    """Run ``options.mode`` inside :func:`open_output` (``digest``: what it yielded)."""
    if options.mode == "lengths":
        return extract_lengths(io, clips, options, rank)
    built = config_hash(feature_config(io, io_kwargs, store_dtype(options.store_dtype, io.torch_dtype)))
    if built != digest:
        raise RuntimeError(f"the encoder built has configuration {built}, its front end {digest}: a bug, please report")
    return extract_features(io, clips, options, rank, digest)


def extract_with(
    io: ContinuousAudioIO, clips: Sequence[Clip], io_kwargs: dict[str, Any], options: ExtractOptions, rank: RankInfo
) -> dict:
    """Run ``options.mode`` on this rank's slice with an ``io`` built by :func:`build_io` from ``io_kwargs``
    (checks and locks the output itself; :func:`run_extract` does that before building the encoder)."""
    with open_output(io_kwargs, options, rank, io) as digest:
        return extract_opened(io, clips, io_kwargs, options, rank, digest)


def run_extract(
    clips: Sequence[Clip], io_kwargs: dict[str, Any], options: ExtractOptions, rank: RankInfo | None = None
) -> dict:
    """Check and lock the output, then build the ``ContinuousAudioIO`` (``io_kwargs``: its arguments) and
    extract this rank's slice of ``clips``.

    ``rank``: None reads torchrun's or a SLURM array's environment (:func:`resolve_rank`).
    Returns the summary (also written as ``summary.json`` into ``options.out``).
    """
    rank = rank or resolve_rank(os.environ)
    with open_output(io_kwargs, options, rank) as digest:
        io = build_io(io_kwargs, options.mode, rank)
        return extract_opened(io, clips, io_kwargs, options, rank, digest)
