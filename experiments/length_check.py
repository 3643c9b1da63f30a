"""find_length vs preprocess's T vs encode_batch's rows vs the rows HF's own path returns (the oracle).

python -m experiments.length_check encoder=qwen_omni length_check.m_max=1000

Every mel length M in [m_min, m_max] goes through the real encoder and through HF's model path
(the family's oracle, on the same weights); edge and random sample counts N go through
preprocess, the encoder, and HF's extractor + model from the waveform. Where HF raises for a
length, its error is recorded: a refusal the family declares for that clip (``expected_refusals``)
hands the length to contaudio's documented rule, any other error fails it; the run fails when HF
judged fewer lengths than the family's ``min_oracle_share``.
"""

from __future__ import annotations

from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from contaudio import ContinuousAudioIO
from contaudio.conformance import ORACLE, RULE, UNJUDGED, Verdict, judge_length, oracle_share, share_reason
from contaudio.encoders.refusals import ClipSize
from contaudio.features import samples_for_frames
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import pad_mels, random_clip, run_experiment

MAX_EXAMPLES = 10  # failures kept in the record's summary (every row is in the table)


def edge_sample_counts(hop: int, hops: list[int]) -> list[int]:
    """Sample counts around hop multiples (the 0-row boundary, chunk edges, 30 s): ``k * hop + {-1, 0, 1}``.

    >>> edge_sample_counts(160, [1, 2])
    [159, 160, 161, 319, 320, 321]
    """
    return sorted({k * hop + d for k in hops for d in (-1, 0, 1) if k * hop + d > 0})


def encoded_rows(io: ContinuousAudioIO, mels: list[np.ndarray], batch_size: int) -> list[int]:
    """Rows encode_batch returns per mel, in padded batches of ``batch_size``."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(mels), batch_size):
            batch, lengths = pad_mels(mels[start : start + batch_size])
            rows += [f.shape[-2] for f in io.encode_batch(batch, lengths)]
    return rows


def table_row(key: dict[str, int], counts: dict[str, int], verdict: Verdict, error: str | None) -> dict[str, Any]:
    hf = {"hf_rows": verdict.figures.get("hf_rows"), "hf_placeholders": verdict.figures.get("hf_placeholders"),
          "hf_error": error, "judged_by": verdict.judged_by, "refusal": verdict.figures.get("refusal")}  # fmt: skip
    return {**key, **counts, **hf, "passed": verdict.passed, "reasons": "; ".join(verdict.reasons)}


def every_m(cfg: DictConfig, io: ContinuousAudioIO, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Each M: find_length (M frames, and both extreme N that give M frames), encoded rows, HF's rows."""
    c = cfg.length_check
    ms = list(range(c.m_min, c.m_max + 1))
    mels = [rng.standard_normal((m, io.n_mels)).astype(np.float32) for m in ms]
    encoded = encoded_rows(io, mels, c.batch_size)
    rows = []
    with torch.inference_mode():
        for m, mel, got in zip(tqdm(ms, desc="every M", leave=False, disable=None), mels, encoded, strict=True):
            oracle = io.family.oracle_from_mel(io.encoder, torch.from_numpy(mel))
            counts = {"find_length_frames": io.find_length(None, before_length=m), "encoded": got}
            extremes = samples_for_frames(io.features, m)  # both extreme N that give M frames (of those it takes)
            if extremes is not None and (fewest := max(extremes[0], io.features.min_samples)) <= extremes[1]:
                counts |= {
                    "find_length_min_n": io.find_length(fewest),
                    "find_length_max_n": io.find_length(extremes[1]),
                }
            verdict = judge_length(counts, oracle, ClipSize(m), io.family.expected_refusals)
            rows.append(table_row({"m": m}, counts, verdict, oracle.error))
    return rows


def sample_counts(cfg: DictConfig, io: ContinuousAudioIO, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Edge and random N: find_length (int, tensor, (wav, sr)), preprocess's T, encoded rows, HF's rows from the wav."""
    c, hop, sr = cfg.length_check, io.features.hop_length, io.sample_rate
    sizes = (
        edge_sample_counts(hop, list(c.edge_hops)) + rng.integers(1, int(c.max_random_s * sr), size=c.random_n).tolist()
    )
    sizes = [n for n in sizes if n >= io.features.min_samples]  # shorter: refused alike (tests/test_short_clips.py)
    wavs = [random_clip(rng, n) for n in sizes]
    pre = [io.preprocess((wav, sr)) for wav in tqdm(wavs, desc="preprocess", leave=False, disable=None)]
    encoded = encoded_rows(io, [p[1][1] for p in pre], c.batch_size)
    frames = torch.tensor([p[1][1].shape[0] for p in pre], dtype=torch.long)  # (long even when empty)
    vectorised = io.find_length(None, before_length=frames).tolist()
    extractor = io.features.hf_extractor()
    rows = []
    with torch.inference_mode():
        progress = tqdm(sizes, desc="HF from waveform", leave=False, disable=None)
        for n, wav, p, got, vec in zip(progress, wavs, pre, encoded, vectorised, strict=True):
            oracle = io.family.oracle(io.encoder, extractor, wav)
            counts = {"find_length": io.find_length(n), "find_length_wav": io.find_length((wav, sr)),
                      "find_length_frames_tensor": vec, "preprocess_t": p[1][0], "seq_rows": p[0].shape[0],
                      "encoded": got}  # fmt: skip
            clip = ClipSize(p[1][1].shape[0], n)
            verdict = judge_length(counts, oracle, clip, io.family.expected_refusals)
            rows.append(table_row({"n": n, "frames": clip.frames}, counts, verdict, oracle.error))
    return rows


def failure_message(row: dict[str, Any]) -> str:
    what = f"M={row['m']} frames" if "m" in row else f"N={row['n']} samples ({row['frames']} frames)"
    return f"{what}: {row['reasons']}"


def run(cfg: DictConfig) -> dict[str, Any]:
    def body(cfg: DictConfig, io: ContinuousAudioIO):
        rng = np.random.default_rng(cfg.seed)
        tables = {"every_m": every_m(cfg, io, rng), "samples": sample_counts(cfg, io, rng)}
        rows = [r for table in tables.values() for r in table]
        failures = [failure_message(r) for r in rows if not r["passed"]]
        judged_by = [r["judged_by"] for r in rows]
        too_few = share_reason(judged_by, io.family.min_oracle_share, io.family.name)
        first_failures = failures[:MAX_EXAMPLES] + ([too_few] if too_few else [])  # clips first: they are named
        failures += [too_few] if too_few else []
        refused = [r for r in rows if r["judged_by"] == RULE]
        metrics = {
            "passed": not failures, "mismatches": len(failures), "m_checked": len(tables["every_m"]),
            "n_checked": len(tables["samples"]), "oracle": io.family.oracle_path, "returns": io.family.returns,
            "judged_by_oracle": judged_by.count(ORACLE), "oracle_share": oracle_share(judged_by),
            "min_oracle_share": io.family.min_oracle_share,
            "judged_by_rule": {"count": len(refused), "note": "HF raised a refusal the family declares; judged by "
                               "contaudio's documented rule",
                               "examples": [{k: r.get(k) for k in ("m", "n", "hf_error", "refusal")}
                                            for r in refused[:3]]},
            "hf_failures_undeclared": judged_by.count(UNJUDGED),
            "first_failures": first_failures,
        }  # fmt: skip
        for message in first_failures:
            print(f"length_check FAILED {message}")
        return metrics, tables

    return run_experiment("length_check", cfg, body)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
