"""Typed schema of conf/: a typo or a wrong type fails at start-up with the key's name.

Values live in the YAML files (with how to override them); this file holds only types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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


def register_configs() -> None:
    """Register the schema under the name conf/config.yaml lists first in its defaults."""
    ConfigStore.instance().store(name="contaudio_schema", node=Config)


register_configs()
