"""Files beside the shards that other toolkits load directly, and one summary over every rank.

Written by ``contaudio extract-index`` and at the end of a single-process features run
(:func:`write_outputs`); each reads the same tensors :class:`~contaudio.extract.store.FeatureStore` does:

* ``cuts.jsonl.gz``: a Lhotse ``CutSet``, one ``MonoCut`` per clip whose ``Features`` point into its
  shard (storage type ``contaudio_safetensors``; call :func:`register_lhotse_reader` before loading):
  ``cut.load_features()`` -> ``[rows, D]`` numpy (bf16 widened to float32, exactly). ``frame_shift`` is
  the family's row period (:func:`row_period_s`); ``num_frames`` = rows, ``num_features`` = D. The cut's
  duration is ``rows`` periods of a whole number of samples (so Lhotse's frame arithmetic gives exactly
  ``rows``); the clip's audio duration is in ``cut.custom["contaudio"]["audio_duration_s"]``. Needs lhotse.
* ``feats.scp`` (``<id> <shard path>:<tensor key>``) and ``feats_shape`` (``<id> <rows>,<D>``), ESPnet-style
  lists: read them with :class:`FeatsScp` / :func:`read_shapes` (the entries are safetensors keys, not
  Kaldi ark offsets: kaldiio cannot read them). Ids holding whitespace cannot be written there: left out.
* ``feats_stats.npz`` (``stats=True``: reads every stored tensor once): ESPnet ``collect_stats``' per-dimension
  ``count`` (rows), ``sum`` and ``sum_square`` (float64), plus ``mean`` and ``std`` (population) -- what
  ESPnet's ``GlobalMVN(stats_file=...)`` reads.
* ``summary.json`` over the ranks of the current plan (several ranks only; each rank's own file is kept):
  the ranks' counts summed, and the store's clips, audio seconds, rows and bytes.

Shard paths in these files are absolute: after moving a folder, run ``extract-index`` on it again.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from contaudio.encoders import get_family
from contaudio.extract.shards import (
    TEMP_PREFIX,
    finished_shards,
    publish,
    read_meta,
    write_text_atomic,
)
from contaudio.extract.store import FeatureStore

log = logging.getLogger(__name__)

CUTS_FILE = "cuts.jsonl.gz"
FEATS_SCP = "feats.scp"
FEATS_SHAPE = "feats_shape"
STATS_FILE = "feats_stats.npz"
SUMMARY_FILE = "summary.json"
OUTPUT_FILES = (CUTS_FILE, FEATS_SCP, FEATS_SHAPE, STATS_FILE)  # what write_outputs writes (besides summary.json)
# mel frames over which a family's row period is measured when it has no fixed window: an hour at 100 frames/s,
# a multiple of every chunk size, so the per-chunk rounding of its length rule vanishes
ROW_PERIOD_SPAN = 360_000
STORAGE_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
SUMMARY_PART = re.compile(r"^summary-r(?P<rank>\d{4,})-of-(?P<world>\d{4,})\.json$")
# per-rank summary counts that add up over ranks
SUMMED_KEYS = ("clips", "clips_ok", "errors", "clips_skipped_done", "clips_failed_before", "clips_retried",
               "clips_encoded", "shards_written", "batches", "audio_hours", "rows")  # fmt: skip


def register_lhotse_reader(_worker_id: int | None = None) -> None:
    """Make Lhotse able to load the features of ``cuts.jsonl.gz`` in this process (idempotent; usable as a
    DataLoader ``worker_init_fn``). See :mod:`contaudio.extract.lhotse_reader`."""
    from contaudio.extract.lhotse_reader import register_lhotse_reader as register

    register()


# ----------------------------------------------------------------------------- frame arithmetic


def row_period_s(family: str, hop_length: int, sample_rate: int) -> float:
    """Seconds per feature row of a family: mel hop x mel frames per row (over a window, or a long span).

    >>> row_period_s("qwen2_5_omni", 160, 16000), row_period_s("whisper", 160, 16000)
    (0.04, 0.02)
    """
    fam = get_family(family)
    span = fam.window_frames or ROW_PERIOD_SPAN
    return float(Fraction(hop_length * span, sample_rate * int(fam.rows(span))))


def lhotse_duration(rows: int, frame_shift: float, sample_rate: int) -> float:
    """The duration whose frames Lhotse counts as exactly ``rows`` (``compute_num_frames``): ``rows`` hops of
    ``round(frame_shift * sample_rate)`` samples.

    >>> lhotse_duration(57, 0.04, 16000), lhotse_duration(0, 0.04, 16000)
    (2.28, 0.0)
    """
    return rows * round(frame_shift * sample_rate) / sample_rate


# ----------------------------------------------------------------------------- the writers


def store_config(folders: Sequence[Path], store: FeatureStore) -> dict[str, Any]:
    """The configuration (``meta.json``) of the store's features: family, hop_length, sample_rate, ..."""
    (digest,) = store.config_hashes
    for folder in folders:
        folder = folder.parent if folder.is_file() else folder
        if config := ((read_meta(folder) or {}).get("configs") or {}).get(digest):
            return config
    raise FileNotFoundError(f"no meta.json in {', '.join(map(str, folders))} describes configuration {digest}")


def write_lhotse_cuts(store: FeatureStore, config: Mapping[str, Any], into: Path) -> Path:
    """``cuts.jsonl.gz``: one features-only ``MonoCut`` per clip, loading through Lhotse's own API."""
    from lhotse import CutSet, Features, MonoCut

    from contaudio.extract.lhotse_reader import LHOTSE_STORAGE_TYPE

    rate = int(config["sample_rate"])
    shift = row_period_s(config["family"], int(config["hop_length"]), rate)
    cuts = []
    for clip_id in store:
        entry = store.entry(clip_id)
        duration = lhotse_duration(int(entry["rows"]), shift, rate)
        features = Features(
            type=f"contaudio:{entry['family']}", num_frames=int(entry["rows"]), num_features=int(entry["dim"]),
            frame_shift=shift, sampling_rate=rate, start=0.0, duration=duration, storage_type=LHOTSE_STORAGE_TYPE,
            storage_path=str(Path(entry["path"]).resolve()), storage_key=entry["key"], recording_id=clip_id,
            channels=0,
        )  # fmt: skip
        custom = {"contaudio": {"audio_duration_s": entry.get("duration_s"), "tag": entry.get("tag"),
                                "dtype": entry.get("dtype"), "config_hash": entry.get("config_hash")}}  # fmt: skip
        cuts.append(MonoCut(id=clip_id, start=0.0, duration=duration, channel=0, features=features, custom=custom))
    temporary = into / f"{TEMP_PREFIX}tmp-{os.getpid()}-{CUTS_FILE}"  # lhotse picks the format by the suffix
    CutSet.from_cuts(cuts).to_file(temporary)
    publish(temporary, into / CUTS_FILE)
    return into / CUTS_FILE


def write_espnet_lists(store: FeatureStore, into: Path) -> tuple[Path, Path]:
    """``feats.scp`` (``<id> <shard>:<key>``) and ``feats_shape`` (``<id> <rows>,<D>``), in index order."""
    scp, shapes, skipped = [], [], []
    for clip_id in store:
        entry = store.entry(clip_id)
        if not clip_id or any(ch.isspace() for ch in clip_id):
            skipped.append(clip_id)
            continue
        scp.append(f"{clip_id} {Path(entry['path']).resolve()}:{entry['key']}\n")
        shapes.append(f"{clip_id} {entry['rows']},{entry['dim']}\n")
    if skipped:
        log.warning("%d clip id(s) hold whitespace and cannot be written into %s (e.g. %r): read them with "
                    "FeatureStore or the Lhotse cuts", len(skipped), FEATS_SCP, skipped[0])  # fmt: skip
    return write_text_atomic(into / FEATS_SCP, "".join(scp)), write_text_atomic(into / FEATS_SHAPE, "".join(shapes))


def feature_stats(store: FeatureStore) -> dict[str, np.ndarray]:
    """ESPnet ``collect_stats``' per-dimension statistics of every stored row, accumulated in float64, clip by
    clip in index order (so shard by shard): ``count``, ``sum``, ``sum_square``, ``mean``, ``std``."""
    count, total, squares = 0, None, None
    for clip_id in store:
        rows = store[clip_id].to(torch.float64)
        if total is None:
            total = torch.zeros(rows.shape[1], dtype=torch.float64)
            squares = torch.zeros_like(total)
        count += rows.shape[0]
        total += rows.sum(0)
        squares += (rows * rows).sum(0)
    if total is None:
        raise ValueError("the store holds no clips: nothing to compute statistics over")
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean * mean).clamp(min=0).sqrt()
    return {"count": np.array(count, dtype=np.int64), "sum": total.numpy(), "sum_square": squares.numpy(),
            "mean": mean.numpy(), "std": std.numpy()}  # fmt: skip


def write_stats(store: FeatureStore, into: Path) -> Path:
    """``feats_stats.npz`` (:func:`feature_stats`), written atomically."""
    temporary = into / f"{TEMP_PREFIX}{STATS_FILE}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:  # a file object: np.savez adds no suffix
        np.savez(handle, **feature_stats(store))
    publish(temporary, into / STATS_FILE)
    return into / STATS_FILE


def write_outputs(
    folders: Sequence[Path], into: Path, *, stats: bool = False, config_hash: str | None = None
) -> list[Path]:
    """The Lhotse cuts (when lhotse is installed), the ESPnet lists and (``stats``) ``feats_stats.npz`` of the
    features in ``folders``, into ``into``. Folders holding several configurations need ``config_hash``; without
    it nothing is written (logged). Returns the files written."""
    try:
        store = FeatureStore(list(folders), config_hash=config_hash)
    except (ValueError, FileNotFoundError) as err:
        log.warning("no Lhotse cuts, feats.scp or stats written (those in the folder, if any, are from before): %s; "
                    "`extract-index --config-hash H` writes them for one configuration", err)  # fmt: skip
        return []
    if not len(store):
        return []
    written = list(write_espnet_lists(store, into))
    try:
        written.append(write_lhotse_cuts(store, store_config(folders, store), into))
    except ImportError:
        log.info("lhotse is not installed: no %s (pip install 'contaudio[lhotse]')", CUTS_FILE)
    if stats:
        written.append(write_stats(store, into))
    return written


# ----------------------------------------------------------------------------- summary over ranks


def merge_summaries(folder: Path, world_size: int | None = None) -> Path | None:
    """``summary.json`` of the ranks' ``summary-r*-of-<world_size>.json`` (default: ``meta.json``'s world size):
    their counts summed (:data:`SUMMED_KEYS`, ``errors_by_stage``), ``passed`` when every rank passed, the ranks
    missing, and (features) the store's clips, audio seconds, rows and bytes. None for a single process (its
    ``summary.json`` is whole) or when no rank of that plan wrote one."""
    world_size = world_size or (read_meta(folder) or {}).get("world_size")
    parts = {}
    for path in sorted(folder.glob("summary-r*-of-*.json")):
        match = SUMMARY_PART.match(path.name)
        if match and int(match["world"]) == world_size:
            parts[int(match["rank"])] = json.loads(path.read_text(encoding="utf-8"))
    if not world_size or world_size == 1 or not parts:
        return None
    ranks = list(parts.values())
    merged: dict[str, Any] = {"mode": ranks[0].get("mode"), "world_size": world_size, "ranks": sorted(parts),
                              "missing_ranks": sorted(set(range(world_size)) - set(parts))}  # fmt: skip
    for key in SUMMED_KEYS:
        if any(key in r for r in ranks):
            merged[key] = sum(r.get(key) or 0 for r in ranks)
    merged["clips_failed"] = merged.get("errors", 0)
    stages: dict[str, int] = {}
    for r in ranks:
        for stage, n in (r.get("errors_by_stage") or {}).items():
            stages[stage] = stages.get(stage, 0) + n
    merged["errors_by_stage"] = stages
    merged["passed"] = not merged["missing_ranks"] and all(r.get("passed", True) for r in ranks)
    if finished_shards(folder):
        merged["store"] = store_totals(folder)
    return write_text_atomic(folder / SUMMARY_FILE, json.dumps(merged, indent=2) + "\n")


def store_totals(folder: Path) -> dict[str, Any]:
    """What a folder's shards hold (every configuration): clips, audio seconds, rows, feature bytes, shard bytes."""
    store = FeatureStore(folder, allow_mixed=True)
    entries = [store.entry(i) for i in store]
    return {
        "clips": len(entries), "audio_s": round(sum(e.get("duration_s") or 0 for e in entries), 6),
        "rows": sum(int(e["rows"]) for e in entries),
        "feature_bytes": sum(int(e["rows"]) * int(e["dim"]) * STORAGE_DTYPE_BYTES[e["dtype"]] for e in entries),
        "shard_bytes": sum(p.stat().st_size for p in finished_shards(folder)), "config_hashes": store.config_hashes,
    }  # fmt: skip


# ----------------------------------------------------------------------------- reading the ESPnet lists back


def read_feats_scp(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """``feats.scp`` -> ``{id: (shard path, tensor key)}`` (a relative path is relative to the working directory,
    as in Kaldi)."""
    entries = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            clip_id, _, target = line.rstrip("\n").partition(" ")
            shard, colon, key = target.rpartition(":")
            if not colon or not shard or not key:
                raise ValueError(f"{path}:{number}: expected '<id> <shard path>:<tensor key>', got {line.strip()!r}")
            entries[clip_id] = (shard, key)
    return entries


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``feats_shape`` -> ``{id: (rows, D)}``."""
    with open(path, encoding="utf-8") as handle:
        pairs = (line.split(maxsplit=1) for line in handle if line.strip())
        return {clip_id: tuple(int(n) for n in shape.split(",")) for clip_id, shape in pairs}


class FeatsScp(Mapping[str, torch.Tensor]):
    """``feats.scp`` as a mapping id -> ``[rows, D]`` tensor (as stored, bf16 or fp32; ``dtype``: cast on read)."""

    def __init__(self, path: str | os.PathLike, dtype: torch.dtype | None = None, open_shards: int = 16) -> None:
        self.entries = read_feats_scp(path)
        self.dtype = dtype
        self.open_shards = open_shards
        self._open: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __getitem__(self, clip_id: str) -> torch.Tensor:
        shard, key = self.entries[clip_id]
        if shard in self._open:
            self._open.move_to_end(shard)
        else:
            self._open[shard] = safe_open(shard, "pt")
            if len(self._open) > self.open_shards:
                self._open.popitem(last=False)
        tensor = self._open[shard].get_tensor(key)
        return tensor if self.dtype is None else tensor.to(self.dtype)

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers open their own files
        return {**self.__dict__, "_open": OrderedDict()}
