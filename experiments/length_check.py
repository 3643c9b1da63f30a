"""find_length vs preprocess T vs the rows encode_batch really returns.

python -m experiments.length_check encoder=qwen_omni length_check.m_max=1000
"""

from __future__ import annotations

from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from contaudio import ContinuousAudioIO
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import pad_mels, random_clip, run_experiment

MAX_EXAMPLES = 10  # mismatches kept in the record
EDGE_HOPS = (1, 2, 3, 100, 199, 200, 201, 400, 3000)  # N = k * hop + {-1, 0, +1} for these k


def edge_sample_counts(hop: int) -> list[int]:
    """Sample counts around hop multiples at the 0-row boundary, chunk edges and 30 s."""
    return sorted({k * hop + d for k in EDGE_HOPS for d in (-1, 0, 1) if k * hop + d > 0})


def agree(row: dict[str, int], key: str) -> bool:
    """All counts in ``row`` (but the input ``key``) are equal."""
    return len({v for k, v in row.items() if k != key}) == 1


def encoded_rows(io: ContinuousAudioIO, mels: list[torch.Tensor], batch_size: int) -> list[int]:
    """Rows encode_batch returns per mel, in padded batches of ``batch_size``."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(mels), batch_size):
            batch, lengths = pad_mels(mels[start : start + batch_size])
            rows += [f.shape[0] for f in io.encode_batch(batch, lengths)]
    return rows


def run(cfg: DictConfig) -> dict[str, Any]:
    def body(cfg: DictConfig, io: ContinuousAudioIO):
        c, hop, sr = cfg.length_check, io.features.hop_length, io.sample_rate
        rng = np.random.default_rng(cfg.seed)
        # 1) every mel length M in range through the real encoder vs the rule and find_length(N) for both
        #    extreme N that give M frames
        ms = list(range(c.m_min, c.m_max + 1))
        mels = [rng.standard_normal((m, io.n_mels)).astype(np.float32) for m in tqdm(ms, desc="mels", leave=False)]
        got = encoded_rows(io, mels, c.batch_size)
        every_m = [
            {"m": m, "encoded": rows, "rule": int(io.family.rows(m)),
             "find_length_min_n": io.find_length((m - 1) * hop + 1), "find_length_max_n": io.find_length(m * hop)}
            for m, rows in zip(ms, got, strict=True)
        ]  # fmt: skip
        # 2) random and edge sample counts through preprocess + encoder, and find_length on a tensor
        sizes = edge_sample_counts(hop) + rng.integers(1, int(c.max_random_s * sr), size=c.random_n).tolist()
        pre = [io.preprocess((random_clip(rng, n), sr)) for n in tqdm(sizes, desc="preprocess", leave=False)]
        got = encoded_rows(io, [p[1][1] for p in pre], c.batch_size)
        vectorised = io.find_length(None, before_length=torch.tensor(sizes)).tolist()
        samples = [
            {"n": n, "find_length": io.find_length(n), "find_length_tensor": vec, "preprocess_t": p[1][0],
             "seq_rows": p[0].shape[0], "encoded": rows}
            for n, p, rows, vec in zip(sizes, pre, got, vectorised, strict=True)
        ]  # fmt: skip
        mismatches = [{"kind": "every_m", **r} for r in every_m if not agree(r, "m")]
        mismatches += [{"kind": "samples", **r} for r in samples if not agree(r, "n")]
        metrics = {
            "passed": not mismatches, "mismatches": len(mismatches), "m_checked": len(ms),
            "n_checked": len(sizes), "first_mismatches": mismatches[:MAX_EXAMPLES],
        }  # fmt: skip
        return metrics, {"every_m": every_m, "samples": samples}

    return run_experiment("length_check", cfg, body)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
