"""What every experiment shares: config -> plain arguments, per-job reset, record, tracker."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from contaudio import ContinuousAudioIO
from contaudio.collate import collate_mels
from contaudio.conformance import Tolerance, tolerance_for
from contaudio.io import parse_device
from contaudio.tracking import NullSink, Sink, WandbSink, environment, write_record
from experiments.config import config_problems
from experiments.mutations import mutated

log = logging.getLogger(__name__)

# (cfg, io) -> (summary metrics, {table name: rows})
Body = Callable[[DictConfig, ContinuousAudioIO], tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]]
_DEFAULT_THREADS = torch.get_num_threads()
MAX_PRINTED_ROWS = 40  # longer tables (per-clip checks) stay in the record and the tracker
PADDING_NOISE = 3.0  # std of the noise mask_check writes past each clip's end (log-mel values lie in about -1.5..3)


class CheckFailed(RuntimeError):
    """A check ran and its result is a failure (raised only with strict=true, after recording)."""


def resolve_device(name: str) -> str:
    """``auto`` -> cuda if available else cpu; anything else unchanged."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def reset_torch_state(cfg: DictConfig) -> None:
    """Multirun jobs share one process: reset threads, default dtype, seeds and CUDA stats per job."""
    torch.set_num_threads(cfg.device.threads or _DEFAULT_THREADS)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(cfg.seed)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def io_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Plain ContinuousAudioIO arguments from the config (the library never sees Hydra objects)."""
    return {
        "encoder_hf_model_tag": cfg.encoder.tag,
        "weights": cfg.encoder.weights,
        "dtype": cfg.dtype.name,
        "device": resolve_device(cfg.device.name),
        "attn_implementation": cfg.attn.implementation,
        "max_duration_s": cfg.encoder.max_duration_s,
        "long_clip": cfg.encoder.long_clip,
        "returns": cfg.encoder.returns,
        "layers": None if cfg.encoder.layers is None else list(cfg.encoder.layers),
        "cuda_graphs": cfg.encoder.cuda_graphs,
        "seed": cfg.seed,
    }


def current_rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def job_overrides() -> list[str]:
    """The command-line overrides of this job (empty outside a Hydra run, e.g. under compose)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def output_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return Path(HydraConfig.get().runtime.output_dir)


def job_name(experiment: str, cfg: DictConfig) -> str:
    return f"{experiment}-{Path(str(cfg.encoder.tag)).name}-{cfg.dtype.name}-{resolve_device(cfg.device.name)}"


def make_sink(cfg: DictConfig, experiment: str, config: dict[str, Any], directory: Path) -> Sink:
    tracker = cfg.tracker
    if tracker.kind == "none" or tracker.mode == "disabled":  # (any other kind is refused before the job runs)
        return NullSink()
    return WandbSink(
        config=config, mode=tracker.mode, project=tracker.project, entity=tracker.entity,
        group=tracker.group or experiment, tags=[experiment, *tracker.tags], name=job_name(experiment, cfg),
        directory=directory, init_timeout=tracker.init_timeout,
    )  # fmt: skip


def run_experiment(
    experiment: str, cfg: DictConfig, body: Body, make_io: Callable[[DictConfig], ContinuousAudioIO] | None = None
) -> dict[str, Any]:
    """Run ``body`` once; write the JSON record, then report to the tracker; return the record.

    A failing job (e.g. a dtype or kernel the device lacks) is recorded with its
    error and does not end a sweep unless ``strict`` is set. ``make_io`` builds the
    ``ContinuousAudioIO`` (default: from ``io_kwargs(cfg)``).
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    directory = output_dir(cfg)
    record: dict[str, Any] = {
        "experiment": experiment, "status": "ok", "error": None, "overrides": job_overrides(), "config": config,
        "mutation": cfg.mutation,
    }  # fmt: skip
    start = time.perf_counter()
    tables: dict[str, list[dict[str, Any]]] = {}
    try:
        if problems := config_problems(cfg):
            raise ValueError(f"bad configuration: {'; '.join(problems)}")
        reset_torch_state(cfg)
        with mutated(cfg.mutation):
            build_start = time.perf_counter()
            io = make_io(cfg) if make_io else ContinuousAudioIO(**io_kwargs(cfg))
            build = {"build_s": time.perf_counter() - build_start, "rss_after_build_mib": current_rss_mib()}
            log.info("%s: dtype %s (%s)", experiment, io.dtype_choice.name, io.dtype_choice.reason)
            record["dtype"] = {"requested": cfg.dtype.name, "resolved": io.dtype_choice.name,
                               "reason": io.dtype_choice.reason}  # fmt: skip
            metrics, tables = body(cfg, io)
        metrics = {**build, **metrics}
        if metrics.get("passed") is False:
            record["status"] = "failed"
    except Exception as err:
        if isinstance(err, (ValueError, TypeError)):  # a refused value (ours or the library's): it says the fix
            log.error("%s failed: %s: %s (traceback in the record)", experiment, type(err).__name__, err)
        else:
            log.exception("%s failed", experiment)
        record.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        metrics = {}
    record.update(
        metrics=metrics, tables=tables, seconds=time.perf_counter() - start,
        environment=environment(parse_device(resolve_device(cfg.device.name)) if record["status"] != "error"
                                else None),
    )  # fmt: skip
    try:
        path = write_record(directory, record, f"record-{experiment}.json")
        log.info("%s: %s; record written to %s", experiment, record["status"], path)
    except OSError as err:  # e.g. an unwritable output dir: say so loudly, still report to the tracker
        log.error("%s: could not write the record into %s (%s)", experiment, directory, err)
        record.update(status="error", error=f"record not written: {err}")
        path = directory
    sink = make_sink(cfg, experiment, config, directory)
    try:
        sink.log_summary({"status": record["status"], **metrics})
        for name, rows in tables.items():
            sink.log_table(name, rows)
    finally:
        sink.finish(failed=record["status"] != "ok")
    for name, rows in tables.items():
        if rows and len(rows) <= MAX_PRINTED_ROWS:
            print(f"\n{experiment} / {name}\n{markdown_table(rows)}")
    print(f"{experiment}: {record['status']}" + (f" ({record['error']})" if record["error"] else "") + f" -> {path}")
    if record["status"] != "ok" and (cfg.strict or single_job()):
        raise CheckFailed(f"{experiment}: {record['status']}: {record['error'] or 'check failed'} (see {path})")
    return record


def single_job() -> bool:
    """Whether Hydra runs this job alone (no ``-m``): a failure then exits non-zero whatever ``strict`` says (only a
    sweep goes on past a failed job). False outside Hydra (``run(cfg)`` called directly)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts -> a markdown table (columns: the given ones, else the first row's keys)."""
    if not rows:
        return ""
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def random_clip(rng: np.random.Generator, num_samples: int, scale: float = 0.1) -> np.ndarray:
    """Gaussian noise clip (float32): timing and lengths do not depend on content."""
    return (rng.standard_normal(num_samples) * scale).astype(np.float32)


SEGMENT_S = (0.05, 0.4)  # speech-like clips: bursts and pauses of this many seconds
SILENT_TAIL = 200  # samples of silence that end a speech-like clip: n_fft // 2, as speech ends in silence


def speechlike_clip(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """Noise bursts of random loudness with silent pauses between them, ending in silence (float32).

    Pauses give the clip more than the log-mel's 80 dB of dynamic range, so its clamp matters;
    the silent end makes a Whisper-style encoder see the clip end as HF's extractor shows it.
    """
    clip = np.zeros(num_samples, dtype=np.float32)
    body = max(num_samples - SILENT_TAIL, 0)
    start, loud = 0, True
    while start < body:
        length = int(rng.uniform(*SEGMENT_S) * sample_rate)
        if loud:
            stop = min(start + length, body)
            clip[start:stop] = rng.standard_normal(stop - start) * 10 ** rng.uniform(-2.5, -0.5)
        start, loud = start + length, not loud
    return clip


def tolerance(cfg: DictConfig, io: ContinuousAudioIO) -> Tolerance:
    """The resolved dtype's tolerance, with the config's overrides (``dtype.mask_atol``/``mask_rtol``)."""
    return tolerance_for(io.torch_dtype, cfg.dtype.mask_atol, cfg.dtype.mask_rtol)


def pad_mels(
    mels: list[np.ndarray], extra: int = 0, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """List of ``[M_i, n_mels]`` -> (``[B, max M + extra, n_mels]``, lengths ``[B]``).

    Padded with zeros (as ESPnet's collate pads), or with noise when ``rng`` is given: what a batch
    holds past a clip's end must never matter, and zeros can hide a leak (a conv maps them to its bias).
    """
    batch, lengths = collate_mels(mels)
    batch = F.pad(batch, (0, 0, 0, extra))
    if rng is not None:
        past_end = torch.arange(batch.shape[1]) >= lengths[:, None]  # [B, M_max]
        noise = torch.from_numpy(rng.standard_normal(batch.shape).astype(np.float32) * PADDING_NOISE)
        batch = torch.where(past_end[:, :, None], noise, batch)
    return batch, lengths
