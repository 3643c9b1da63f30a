"""Every config of every group composes; typos and wrong types fail at start-up naming the key."""

from __future__ import annotations

import pytest
from helpers.hydra_compose import CONF_DIR, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

GROUPS = ("encoder", "dtype", "device", "attn", "tracker", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "name"), [(g, n) for g in GROUPS for n in options(g)])
def test_every_config_composes(group: str, name: str) -> None:
    cfg = compose_config([f"{group}={name}"])
    assert cfg.encoder.tag and cfg.dtype.name in ("auto", "bfloat16", "float16", "float32")
    assert cfg.tracker.kind in ("wandb", "none")


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
