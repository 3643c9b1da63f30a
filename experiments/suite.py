"""bench, mask_check and length_check in one job (CI smoke, per-family checks).

python -m experiments.suite experiment=ci_smoke
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from experiments import bench, length_check, mask_check
from experiments.common import CheckFailed


def run(cfg: DictConfig) -> dict[str, Any]:
    """Each experiment's record. A failure ends the suite at once with ``strict=true``; a job run alone without it
    still runs all three, then exits non-zero naming the failures."""
    records, failures = {}, []
    for module in (length_check, mask_check, bench):
        try:
            records[module.__name__.rsplit(".", 1)[-1]] = module.run(cfg)
        except CheckFailed as err:
            if cfg.strict:
                raise
            failures.append(str(err))
    if failures:
        raise CheckFailed("; ".join(failures))
    return records


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
