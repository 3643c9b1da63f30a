"""Every config of every group composes; typos and wrong types fail at start-up naming the key."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.hydra_compose import CONF_DIR, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from experiments import bench, common
from experiments.common import CheckFailed
from experiments.config import config_problems
from experiments.length_check import edge_sample_counts
from experiments.mask_check import clip_lengths

SAMPLE_RATE, HOP = 16000, 160  # every smoke family's extractor
CHUNK_EDGE_FRAMES = 200  # Qwen2.5-Omni's first chunk edge (2 * n_window frames), Qwen3-Omni's second (100-frame chunks)
GROUPS = ("encoder", "dtype", "device", "attn", "tracker", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "name"), [(g, n) for g in GROUPS for n in options(g)])
def test_every_config_composes(group: str, name: str) -> None:
    cfg = compose_config([f"{group}={name}"])
    assert cfg.encoder.tag and cfg.dtype.name in ("auto", "bfloat16", "float16", "float32")
    assert cfg.tracker.kind in ("wandb", "none")
    assert not config_problems(cfg)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("bench.batch_sizes=[0]", "bench.batch_sizes must be a non-empty list of batch sizes >= 1, got [0]"),
        ("bench.batch_sizes=[]", "bench.batch_sizes must be a non-empty list"),  # it passed, having timed nothing
        ("bench.durations_s=[-1]", "bench.durations_s must be a non-empty list of clip lengths > 0 s"),
        ("bench.gemm_size=-5", "bench.gemm_size must be >= 0"),
        ("seed=-1", "seed must be an integer >= 0"),
        ("device.threads=-1", "device.threads must be null or a thread count >= 1"),
        ("tracker.kind=foo", "tracker.kind must be wandb or none, got 'foo'"),
        ("tracker.mode=foo", "tracker.mode must be offline, online, disabled"),
        ("mask_check.num_batches=0", "mask_check.num_batches must be >= 1"),
        ("mask_check.max_duration_s=-3", "mask_check.max_duration_s must be > 0 s"),
        ("length_check.batch_size=0", "length_check.batch_size must be >= 1"),
        ("length_check.m_min=0", "length_check.m_min must be >= 1 (mel frames)"),
        ("length_check.m_max=0", "length_check.m_max must be >= length_check.m_min"),
        ("length_check.random_n=-2", "length_check.random_n must be >= 0"),
    ],
)
def test_values_no_type_rules_out_are_named_with_what_they_must_be(override: str, fragment: str) -> None:
    assert any(fragment in problem for problem in config_problems(compose_config([override]))), override


def test_a_bad_value_is_recorded_and_a_single_job_exits_non_zero(tmp_path, monkeypatch) -> None:
    """Recorded as the job's error before anything is built (a sweep goes on); run alone (no -m), the job fails
    whatever strict says: a script or a SLURM chain must not read a failed job as done."""
    cfg = compose_config(["experiment=ci_smoke", "strict=false", f"output_dir={tmp_path}", "bench.batch_sizes=[0]"])
    record = bench.run(cfg)
    assert record["status"] == "error" and "bad configuration: bench.batch_sizes" in record["error"]
    assert "metrics" in record and not record["metrics"]
    monkeypatch.setattr(common, "single_job", lambda: True)
    with pytest.raises(CheckFailed, match="bad configuration"):
        bench.run(cfg)


def test_defaults_are_the_readme_ones() -> None:
    cfg = compose_config([])
    assert cfg.encoder.tag == "Qwen/Qwen2.5-Omni-7B" and cfg.encoder.weights == "random"
    assert cfg.dtype.name == "auto" and cfg.device.name == "cpu" and cfg.mutation is None
    assert cfg.tracker.kind == "wandb" and cfg.tracker.mode == "offline"


def test_slurm_launcher_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with_launcher = compose_config(["hydra/launcher=slurm"])
    assert with_launcher.encoder.tag  # the job config is unaffected


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("bench.durations=[1]", "durations"),  # typo of durations_s
        ("encoder.wieghts=random", "wieghts"),
        ("bench.repeats=three", "repeats"),
        ("seed=1.5", "seed"),
        ("dtype=fp8", "fp8"),
        ("length_check.edge_hops=[a]", "edge_hops"),
    ],
)
def test_typos_and_wrong_types_fail_naming_the_key(override: str, fragment: str) -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        compose_config([override])
    message = str(err.value) + str(err.value.__cause__ or "")
    assert fragment in message


SMOKE_FAMILIES = ("tiny_qwen_omni", "tiny_qwen3_omni", "tiny_whisper", "tiny_audioflamingo3", "tiny_glmasr")


@pytest.mark.parametrize("encoder", SMOKE_FAMILIES)
def test_the_smoke_run_reaches_long_clips_windows_and_chunk_edges(encoder: str) -> None:
    """ci_smoke's clips cross 30 s (a second window, the waveform cut), 300 s and the chunk edges of the chunked
    towers (2 s for Qwen2.5-Omni, 1 s for Qwen3-Omni), so a mutation on those paths (late_frames) is reached."""
    cfg = compose_config(["experiment=ci_smoke", f"encoder={encoder}"])
    sizes = [n for batch in clip_lengths(cfg, np.random.default_rng(cfg.seed), SAMPLE_RATE, HOP) for n in batch]
    edges = edge_sample_counts(HOP, list(cfg.length_check.edge_hops))
    assert max(sizes) > 300 * SAMPLE_RATE and max(edges) > 30 * SAMPLE_RATE
    assert any(2 * SAMPLE_RATE < n < 30 * SAMPLE_RATE for n in sizes)  # a clip across the first chunk edges
    assert cfg.length_check.m_max > CHUNK_EDGE_FRAMES and cfg.encoder.long_clip in ("raise", "windows")
