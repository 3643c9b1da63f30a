"""Typed schema of conf/: a typo or a wrong type fails at start-up with the key's name.

Values live in the YAML files (with how to override them); this file holds only types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

TRACKER_KINDS = ("wandb", "none")
TRACKER_MODES = ("offline", "online", "disabled")


@dataclass
class EncoderConf:
    tag: str = MISSING  # hub id, local dir or shipped card
    weights: str = "random"  # random | pretrained
    long_clip: str = "raise"  # fixed-window families: raise | windows
    max_duration_s: float | None = None
    returns: str | None = None  # encoder.returns=lm | tower | hidden_states (null: lm; whisper: tower)
    layers: list[int] | None = None  # encoder.returns=hidden_states encoder.layers=[4,-1]: HF's hidden_states indices
    cuda_graphs: bool = False  # CUDA, experimental: replay the layer stack from a graph per bucket of padded shapes


@dataclass
class DtypeConf:
    name: str = MISSING  # auto | bfloat16 | float16 | float32
    mask_atol: float | None = None  # None: the resolved dtype's tolerance
    mask_rtol: float | None = None


@dataclass
class DeviceConf:
    name: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: int | None = None


@dataclass
class AttnConf:
    implementation: str | None = None  # null | sdpa | eager | flash_attention_2


@dataclass
class TrackerConf:
    kind: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "contaudio"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0


@dataclass
class BenchConf:
    durations_s: list[float] = MISSING
    batch_sizes: list[int] = MISSING
    preprocess_durations_s: list[float] = MISSING
    preprocess_clips: int = MISSING
    warmup: int = MISSING
    repeats: int = MISSING
    reference: bool = MISSING
    gemm_size: int = MISSING
    compile: str | None = None


@dataclass
class MaskCheckConf:
    num_batches: int = MISSING
    batch_size: int = MISSING
    max_duration_s: float = MISSING
    tiny_clips: bool = MISSING
    long_clip_s: float = MISSING
    reference: bool = MISSING


@dataclass
class LengthCheckConf:
    m_min: int = MISSING
    m_max: int = MISSING
    batch_size: int = MISSING
    random_n: int = MISSING
    max_random_s: float = MISSING
    edge_hops: list[int] = MISSING


@dataclass
class ExtractConf:
    mode: str = MISSING  # lengths | features
    input: str = MISSING  # manifest, wav.scp, data folder, JSONL, audio folder or glob
    format: str = MISSING  # auto | lhotse | kaldi | jsonl | glob
    segments: str | None = None
    out: str = MISSING  # output folder, shared by every rank
    workers: int | None = None
    max_frames: int = MISSING
    max_clips: int = MISSING
    shard_mb: float = MISSING
    store_dtype: str = MISSING  # same | bfloat16 | float32
    overwrite: bool = MISSING
    allow_mixed: bool = MISSING
    verify: int = MISSING
    decode_lengths: bool = MISSING
    max_errors: int | None = None  # fail when more clips than this cannot be used (None: only when all fail)
    retry_failed: bool = MISSING
    allow_pipes: bool = MISSING
    rank: int | None = None
    world_size: int | None = None
    progress: bool = MISSING


@dataclass
class Config:
    encoder: EncoderConf = MISSING
    dtype: DtypeConf = MISSING
    device: DeviceConf = MISSING
    attn: AttnConf = MISSING
    tracker: TrackerConf = MISSING
    bench: BenchConf = MISSING
    mask_check: MaskCheckConf = MISSING
    length_check: LengthCheckConf = MISSING
    extract: ExtractConf = MISSING
    seed: int = 0
    strict: bool = False
    output_dir: str | None = None
    mutation: str | None = None


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda value: value >= low


def above(low: float) -> Callable[[Any], bool]:
    return lambda value: value > low


def non_empty_list(each: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda values: len(values) > 0 and all(each(v) for v in values)


# (key, test, what it must be): the values the types above cannot rule out, checked before a job builds anything
VALUE_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", at_least(0), "an integer >= 0"),
    ("device.threads", lambda v: v is None or v >= 1, "null or a thread count >= 1"),
    ("tracker.kind", lambda v: v in TRACKER_KINDS, " or ".join(TRACKER_KINDS)),
    ("tracker.mode", lambda v: v in TRACKER_MODES, ", ".join(TRACKER_MODES)),
    ("bench.durations_s", non_empty_list(above(0)), "a non-empty list of clip lengths > 0 s"),
    ("bench.batch_sizes", non_empty_list(at_least(1)), "a non-empty list of batch sizes >= 1"),
    ("bench.preprocess_durations_s", lambda v: all(x > 0 for x in v), "a list of clip lengths > 0 s"),
    ("bench.preprocess_clips", at_least(1), ">= 1"),
    ("bench.warmup", at_least(0), ">= 0"),
    ("bench.repeats", at_least(1), ">= 1"),
    ("bench.gemm_size", at_least(0), ">= 0 (0: no GEMM probe)"),
    ("mask_check.num_batches", at_least(1), ">= 1"),
    ("mask_check.batch_size", at_least(1), ">= 1"),
    ("mask_check.max_duration_s", above(0), "> 0 s"),
    ("mask_check.long_clip_s", at_least(0), ">= 0 s (0: no long clip)"),
    ("length_check.m_min", at_least(1), ">= 1 (mel frames)"),
    ("length_check.batch_size", at_least(1), ">= 1"),
    ("length_check.random_n", at_least(0), ">= 0"),
    ("length_check.max_random_s", above(0), "> 0 s"),
    ("length_check.edge_hops", lambda v: all(x >= 0 for x in v), "a list of hop counts >= 0"),
)


def config_problems(cfg: DictConfig) -> list[str]:
    """What is wrong with ``cfg``'s values, each naming its key and what it must be (empty: nothing). A check that
    could run on nothing (an empty list, an empty range) is a problem too: it would pass having checked nothing."""
    problems = []
    for key, test, must in VALUE_RULES:
        value = OmegaConf.select(cfg, key)
        if not test(value):
            problems.append(f"{key} must be {must}, got {value!r}")
    if (low := cfg.length_check.m_min) > (high := cfg.length_check.m_max):
        problems.append(f"length_check.m_max must be >= length_check.m_min, got {high} < {low} (no length to check)")
    return problems


def register_configs() -> None:
    """Register the schema under the name conf/config.yaml lists first in its defaults."""
    ConfigStore.instance().store(name="contaudio_schema", node=Config)


register_configs()
