"""ci_smoke on the tiny card with cpu, tracker off and a tmp output dir."""

from __future__ import annotations

import pytest
from helpers.hydra_compose import compose_config
from omegaconf import DictConfig


@pytest.fixture
def smoke_cfg(tmp_path) -> DictConfig:
    return compose_config(["experiment=ci_smoke", "tracker=none", "device=cpu", f"output_dir={tmp_path}"])
