"""bench, mask_check and length_check in one job (CI smoke, per-family checks).

python -m experiments.suite experiment=ci_smoke
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from experiments import bench, length_check, mask_check


def run(cfg: DictConfig) -> dict[str, Any]:
    return {module.__name__.rsplit(".", 1)[-1]: module.run(cfg) for module in (length_check, mask_check, bench)}


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
