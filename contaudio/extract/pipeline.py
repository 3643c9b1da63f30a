"""The features loop's host side, sized for a GPU: where each second goes, one copy per batch, a writer thread.

Per batch, the main thread only launches work: the next padded mel is uploaded ahead (pinned memory, a side
stream on CUDA), ``encode_batch`` runs, and :func:`device_to_host` makes the batch's ONE device-to-host copy (its
rows concatenated on the device in the stored dtype, copied into pinned memory on a side stream, a CUDA event
recorded). Nothing on that path reads a value back from the device: row counts come from the length rule, on the
host. :class:`BatchWriter`'s thread waits on the event, splits the rows per clip (views, no copy) and writes each
shard once its last batch arrived, so the next batch encodes while the previous one copies and writes.

:class:`StageTimes` says where the run spent its time (``summary.json``'s ``stages``).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contaudio.extract.shards import TENSOR_KEY, write_shard

MAX_AUTO_WORKERS = 8  # data-loader workers chosen by default: min(8, cores per rank - 1)
PREFETCH_BATCHES = 8  # batches the workers keep ready in all (prefetch_factor = max(2, 8 // workers))
WRITE_QUEUE_SHARDS = 2  # shards' worth of batches waiting for the writer (each holds its rows in memory)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask: what SLURM or taskset gave it), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity mask
        return os.cpu_count() or 1


def local_ranks(env: Mapping[str, str] = os.environ) -> int:
    """Processes sharing this node's cores: torchrun's ``LOCAL_WORLD_SIZE`` (1 when unset)."""
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_workers(cores: int, ranks_on_node: int = 1) -> int:
    """Data-loader workers for one rank: its share of the cores less one (the main thread's), at most 8.

    >>> default_workers(16), default_workers(2), default_workers(1), default_workers(64, ranks_on_node=8)
    (8, 1, 0, 7)
    """
    return max(0, min(MAX_AUTO_WORKERS, cores // max(1, ranks_on_node) - 1))


def prefetch_factor(workers: int) -> int | None:
    """Batches each worker keeps ready: about 8 in all, at least 2 each (None without workers).

    >>> prefetch_factor(0), prefetch_factor(2), prefetch_factor(8)
    (None, 4, 2)
    """
    return max(2, PREFETCH_BATCHES // workers) if workers else None


@dataclass(frozen=True)
class LoaderChoice:
    """How the batches are loaded: ``workers`` data-loader workers (``reason``: why that many), each keeping
    ``prefetch_factor`` batches ready, pinned when the encoder is on CUDA."""

    workers: int
    reason: str
    prefetch_factor: int | None
    pin_memory: bool

    @classmethod
    def resolve(cls, workers: int | None, device: torch.device, env: Mapping[str, str] = os.environ) -> LoaderChoice:
        """``workers`` None: :func:`default_workers` from the cores present."""
        if workers is None:
            cores, ranks = available_cores(), local_ranks(env)
            workers = default_workers(cores, ranks)
            share = f"{cores} cores / {ranks} ranks on the node" if ranks > 1 else f"{cores} cores"
            reason = f"default: min({MAX_AUTO_WORKERS}, {share} - 1)"
        else:
            reason = "asked for"
        return cls(workers, reason, prefetch_factor(workers), device.type == "cuda")

    def record(self) -> dict[str, Any]:
        return {"workers": self.workers, "workers_reason": self.reason, "prefetch_factor": self.prefetch_factor,
                "pin_memory": self.pin_memory}  # fmt: skip


@dataclass
class StageTimes:
    """Seconds per stage of the features loop (host clocks; the writer thread fills its own fields).

    decode_s / preprocess_s / collate_s: summed over the data-loader workers (worker-seconds, as they reported
    them). first_batch_s: waiting for the first batch (workers starting). wait_s: waiting for the loader after it.
    encode_s: ``encode_batch`` (on CUDA the launches only, unless the device is behind). copy_s: launching the
    device-to-host copy (on the CPU: the copy itself). copy_wait_s: the writer waiting for copies to land.
    write_s: the writer serialising and writing shards. encode_device_s: CUDA's own clock over the encodes.
    """

    decode_s: float = 0.0
    preprocess_s: float = 0.0
    collate_s: float = 0.0
    first_batch_s: float = 0.0
    wait_s: float = 0.0
    encode_s: float = 0.0
    copy_s: float = 0.0
    copy_wait_s: float = 0.0
    write_s: float = 0.0
    encode_device_s: float = 0.0
    bytes_written: int = 0

    def add_worker(self, item: Mapping[str, Any]) -> None:
        """Add what a worker reported with its batch (``item["times"]``)."""
        times = item.get("times", {})
        self.decode_s += times.get("decode_s", 0.0)
        self.preprocess_s += times.get("preprocess_s", 0.0)
        self.collate_s += times.get("collate_s", 0.0)

    def record(self, loop_s: float, workers: int) -> dict[str, Any]:
        """The ``stages`` of ``summary.json``: seconds, each main-thread and writer stage's share of the loop's
        wall time, the workers' busy share, and bytes written per second of loop."""
        main = {"first_batch": self.first_batch_s, "wait_for_data": self.wait_s, "encode": self.encode_s,
                "copy": self.copy_s}  # fmt: skip
        writer = {"copy_wait": self.copy_wait_s, "write": self.write_s}
        worker = {"decode": self.decode_s, "preprocess": self.preprocess_s, "collate": self.collate_s}
        seconds = {**{f"{k}_s": v for k, v in {**worker, **main, **writer}.items()}}
        if self.encode_device_s:
            seconds["encode_device_s"] = self.encode_device_s
        share = {k: v / loop_s for k, v in {**main, **writer}.items()} if loop_s > 0 else {}
        busy = sum(worker.values()) / (loop_s * max(workers, 1)) if loop_s > 0 else None
        return {**seconds, "share_of_loop": share, "workers_busy": busy, "bytes_written": self.bytes_written,
                "write_bytes_per_s": self.bytes_written / loop_s if loop_s > 0 else None}  # fmt: skip


@dataclass
class HostRows:
    """One batch's rows ``[sum of rows, D]`` in the stored dtype on the host (pinned on CUDA), valid once ``ready``
    (a CUDA event; None on the CPU) has completed; ``encode_span``: CUDA timing events around the encode."""

    rows: torch.Tensor
    ready: torch.cuda.Event | None = None
    encode_span: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    def wait(self) -> float:
        """Block until the copy has landed; returns the encode's device seconds (0.0 on the CPU)."""
        if self.ready is None:
            return 0.0
        self.ready.synchronize()
        return self.encode_span[0].elapsed_time(self.encode_span[1]) / 1000 if self.encode_span else 0.0


class Streams:
    """CUDA side streams of the loop: ``upload`` (the next mel, ahead) and ``download`` (rows to the host), so both
    copies overlap the encoder's kernels. On the CPU, every method is the plain operation."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.upload = torch.cuda.Stream(device) if self.cuda else None
        self.download = torch.cuda.Stream(device) if self.cuda else None

    def to_device(self, mel: torch.Tensor | None) -> torch.Tensor | None:
        """``mel`` (pinned by the loader) uploaded on the upload stream without waiting for it; the compute stream
        waits for the upload before its next kernel (:meth:`before_encode`)."""
        if mel is None or not self.cuda:
            return mel
        with torch.cuda.stream(self.upload):
            on_device = mel.to(self.device, non_blocking=True)
        on_device.record_stream(torch.cuda.current_stream(self.device))  # freed only after compute used it
        return on_device

    def before_encode(self) -> tuple[torch.cuda.Event, torch.cuda.Event] | None:
        if not self.cuda:
            return None
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.upload)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(compute)
        return start, end


def device_to_host(
    features: Sequence[torch.Tensor],
    stored: torch.dtype,
    streams: Streams | None = None,
    encode_span: tuple[torch.cuda.Event, torch.cuda.Event] | None = None,
) -> HostRows:
    """A batch's per-clip rows -> ONE ``[sum of rows, D]`` host tensor in ``stored``, in one device-to-host copy.

    On CUDA: concatenated and cast on the device, copied into pinned memory on the download stream
    (``non_blocking``), an event recorded; nothing waits here. On the CPU: the concatenation is the copy (the
    result owns its storage, never a view of the encoder's output).
    """
    flat = torch.cat(list(features)).to(stored)
    if flat.device.type != "cuda":
        return HostRows(flat)
    if streams is None:
        streams = Streams(flat.device)
    compute = torch.cuda.current_stream(flat.device)
    if encode_span is not None:
        encode_span[1].record(compute)
    host = torch.empty(flat.shape, dtype=stored, pin_memory=True)
    streams.download.wait_stream(compute)
    with torch.cuda.stream(streams.download):
        host.copy_(flat, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(streams.download)
    flat.record_stream(streams.download)  # its memory is not reused before the copy has read it
    return HostRows(host, ready, encode_span)


@dataclass
class BatchJob:
    """What the writer needs of one batch: its rows (None when no clip had any), its clips in key order (the
    empty ones first) as ``(entry, rows)``, the error records of its clips that failed, and the shard it completes
    (None when the shard goes on)."""

    host: HostRows | None
    clips: list[tuple[dict[str, Any], int]]
    failed: list[dict[str, Any]]
    shard: str | None
    empty_dtype: torch.dtype = torch.float32
    dim: int = 0


SHARD_WRITERS = 4  # shards serialised and written (write + fsync + rename) at once, beside the writer thread


class BatchWriter:
    """The writer thread: per batch, wait for its copy, split its rows per clip, and hand each shard, when its last
    batch arrives, to a pool of :data:`SHARD_WRITERS` threads that publish it (atomically, by :func:`write_shard`):
    a shard's write and fsync overlap the next batches. ``submit`` blocks when ``max_pending`` batches wait; an
    error in a thread is raised by the next ``submit`` or by ``close``."""

    def __init__(self, directory: Path, times: StageTimes, max_pending: int) -> None:
        self.directory = directory
        self.times = times
        self.written: list[Path] = []
        self._pool = ThreadPoolExecutor(max_workers=SHARD_WRITERS, thread_name_prefix="contaudio-shard-writer")
        self._writes: list[Future[Path]] = []
        self._times_lock = threading.Lock()
        self._queue: queue.Queue[BatchJob | None] = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        self._entries: list[dict[str, Any]] = []
        self._failed: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="contaudio-batch-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._take(job)
                except BaseException as err:  # kept and raised in the main thread
                    self._error = err

    def _take(self, job: BatchJob) -> None:
        rows = [n for _, n in job.clips]
        parts: list[torch.Tensor] = []
        if job.host is not None:
            began = time.perf_counter()
            self.times.encode_device_s += job.host.wait()
            self.times.copy_wait_s += time.perf_counter() - began
            nonzero = [n for n in rows if n]
            parts = list(job.host.rows.split(nonzero))
        it = iter(parts)
        for entry, n in job.clips:
            feats = next(it) if n else torch.empty(0, job.dim, dtype=job.empty_dtype)
            key = TENSOR_KEY.format(len(self._tensors))  # the id is data in the entry, never a tensor key
            self._tensors[key] = feats
            self._entries.append({**entry, "key": key, "rows": feats.shape[0]})
        self._failed += job.failed
        if job.shard is not None:
            self._writes.append(self._pool.submit(self._publish, job.shard, self._tensors, self._entries, self._failed))
            self._tensors, self._entries, self._failed = {}, [], []

    def _publish(self, name: str, tensors: dict[str, torch.Tensor], entries: list[dict], failed: list[dict]) -> Path:
        """One shard, on a pool thread: its write time (thread-seconds) and bytes go to the stage times."""
        began = time.perf_counter()
        path = write_shard(self.directory, name, tensors, entries, failed)
        with self._times_lock:
            self.times.write_s += time.perf_counter() - began
            self.times.bytes_written += path.stat().st_size
        return path

    def _raise_error(self) -> None:
        if self._error is None:
            self._error = next((f.exception() for f in self._writes if f.done() and f.exception()), None)
        if self._error is not None:
            raise RuntimeError(f"writing a shard into {self.directory} failed: {self._error}") from self._error

    def submit(self, job: BatchJob) -> None:
        self._raise_error()
        self._queue.put(job)

    def close(self) -> list[Path]:
        """Wait for every submitted batch and shard; return the shards written, in name order."""
        self._queue.put(None)
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._raise_error()
        self.written = sorted(f.result() for f in self._writes)
        return self.written
