"""Compare the jobs of a (multi)run: a markdown table and a PNG plot.

    python -m experiments.report multirun/2026-11-25/10-00-00
writes report.md and report.png into that directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.common import markdown_table

RECORD_GLOB = "record-*.json"
COLUMNS = (
    "job", "experiment", "status", "encoder", "dtype", "device", "attn", "encode_audio_s_per_s",
    "hf_encode_audio_s_per_s", "encode_speedup", "encode_util_vs_gemm", "encode_mfu", "preprocess_speedup",
    "max_abs_error", "length_mismatches", "error",
)  # fmt: skip
LABEL_FIELDS = ("encoder", "dtype", "attn", "device")  # a job's plot label: those of them that vary across jobs


def load_records(root: Path) -> list[dict[str, Any]]:
    """Every record below ``root``, with the job directory it came from."""
    records = []
    for path in sorted(root.rglob(RECORD_GLOB), key=lambda p: job_order(p.relative_to(root))):
        record = json.loads(path.read_text())
        record["job_dir"] = str(path.parent.relative_to(root)) or "."
        records.append(record)
    return records


def job_order(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key in job order: numbered folders by number (a sweep's 2 before 10).

    >>> sorted(["10/r.json", "2/r.json", "a/r.json"], key=lambda p: job_order(Path(p)))
    ['2/r.json', '10/r.json', 'a/r.json']
    """
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in path.parts)


def plot_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's label: the fields of :data:`LABEL_FIELDS` that differ between the rows (an encoder by its last
    name part), one per line; all of them when none differ."""
    varying = [f for f in LABEL_FIELDS if len({r[f] for r in rows}) > 1] or list(LABEL_FIELDS)
    return ["\n".join(str(r[f]).rsplit("/", 1)[-1] for f in varying) for r in rows]


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """One table row: identity of the job and its headline figures."""
    config, metrics = record["config"], record.get("metrics") or {}
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(
        job=",".join(record.get("overrides") or []) or record["job_dir"], experiment=record["experiment"],
        status=record["status"], error=record.get("error"), encoder=config["encoder"]["tag"],
        dtype=config["dtype"]["name"], device=config["device"]["name"],
        attn=config["attn"]["implementation"] or "default",
    )  # fmt: skip
    encode = list((metrics.get("encode") or {}).values())
    if encode:
        best = max(encode, key=lambda r: r["ours_audio_s_per_s"])
        row.update(
            encode_audio_s_per_s=best["ours_audio_s_per_s"],
            hf_encode_audio_s_per_s=best.get("hf_audio_s_per_s"),
            encode_speedup=best.get("speedup_vs_hf"),
            encode_util_vs_gemm=best.get("ours_util_vs_gemm"),
            encode_mfu=best.get("ours_mfu"),
        )
    preprocess = list((metrics.get("preprocess") or {}).values())
    if preprocess and "speedup_vs_hf" in preprocess[0]:
        row["preprocess_speedup"] = min(r["speedup_vs_hf"] for r in preprocess)
    if "max_abs_batched_vs_alone" in metrics:
        row["max_abs_error"] = max(metrics["max_abs_batched_vs_alone"] or 0.0, metrics.get("max_abs_vs_oracle") or 0.0)
    if "mismatches" in metrics:
        row["length_mismatches"] = metrics["mismatches"]
    return row


def to_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(rows, [c for c in COLUMNS if any(r[c] is not None for r in rows)])


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Encode throughput (ours vs HF) and max error per job; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench = [r for r in rows if r["encode_audio_s_per_s"] is not None]
    errors = [r for r in rows if r["max_abs_error"] is not None]
    if not bench and not errors:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if bench:
        labels = plot_labels(bench)
        x = range(len(bench))
        axes[0].bar([i - 0.2 for i in x], [r["encode_audio_s_per_s"] for r in bench], 0.4, label="contaudio")
        axes[0].bar([i + 0.2 for i in x], [r["hf_encode_audio_s_per_s"] or 0 for r in bench], 0.4, label="HF reference")
        axes[0].set_xticks(list(x), labels)
        axes[0].set_ylabel("encode audio-seconds / s (best config)")
        axes[0].legend()
    axes[0].set_title("encode throughput")
    if errors:
        axes[1].bar(range(len(errors)), [r["max_abs_error"] for r in errors])
        axes[1].set_xticks(range(len(errors)), plot_labels(errors))
        axes[1].set_yscale("log")
        axes[1].set_ylabel("max |error| (batched vs alone / HF oracle)")
    axes[1].set_title("mask_check max error")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a Hydra run or multirun directory")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"{args.root} is not a directory: point at a Hydra run or multirun directory")
    records = load_records(args.root)
    if not records:
        raise SystemExit(f"no {RECORD_GLOB} files under {args.root}; point at a run or multirun directory")
    rows = [summarize(r) for r in records]
    table = to_markdown(rows)
    (args.root / "report.md").write_text(f"# contaudio report: {args.root}\n\n{table}")
    image = plot(rows, args.root / "report.png")
    print(table)
    print(f"wrote {args.root / 'report.md'}" + (f" and {image}" if image else ""))


if __name__ == "__main__":
    main()
