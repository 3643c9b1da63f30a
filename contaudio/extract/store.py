"""Read extracted features back: ``FeatureStore(path or paths)`` -> a mapping id -> ``[rows, D]`` tensor.

Training with a frozen encoder reads features here and never builds the encoder. A folder is
read through its ``index.jsonl`` when that lists every shard in it, else from the shard headers
(a run still going, or ranks whose merge has not run). Several folders (one per run or per
machine) read as one store; an id in two of them, or features of two configurations, is refused
unless ``allow_mixed=True``. A folder can hold one clip under several configurations (``--allow-mixed``):
``config_hash=`` picks one. Within a folder, a clip stored twice with one configuration is read once.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from contaudio.extract.shards import INDEX_FILE, drop_duplicates, finished_shards, read_jsonl, shard_entries

log = logging.getLogger(__name__)

OPEN_SHARDS = 64  # shard files kept open (memory-mapped) at once per process


def folder_entries(path: Path) -> list[dict[str, Any]]:
    """Index entries of one folder (or one ``index.jsonl``), each with ``path``: its shard's location."""
    if path.is_file():
        index, folder = path, path.parent
    elif path.is_dir():
        index, folder = path / INDEX_FILE, path
    else:
        raise FileNotFoundError(f"no feature store at {path}: pass an extract output folder or its index.jsonl")
    shards = finished_shards(folder)
    if index.is_file():
        entries = read_jsonl(index)
        listed = {(folder / e["shard"]).resolve() for e in entries}
        unlisted = [shard for shard in shards if shard.resolve() not in listed]
        if path.is_file() or not any(shard_entries(shard) for shard in unlisted):  # (a shard of failures lists none)
            return [{**e, "path": folder / e["shard"]} for e in drop_duplicates(entries, folder)]
        log.info("%s does not list every shard in %s (a run in progress, or ranks not merged): reading the shard "
                 "headers; `python -m contaudio extract-index %s` rebuilds it", index, folder, folder)  # fmt: skip
    if not shards:
        raise FileNotFoundError(f"{folder} holds no feature shards: run extract with mode=features into it first")
    entries = drop_duplicates([e for shard in shards for e in shard_entries(shard)], folder)
    return [{**e, "path": folder / e["shard"]} for e in entries]


class FeatureStore(Mapping[str, torch.Tensor]):
    """Features extracted by ``contaudio extract``: ``store[clip_id]`` -> ``[rows, D]`` tensor (as stored).

    paths: an output folder, its ``index.jsonl``, or a list of them (read as one store).
    dtype: cast every tensor to this dtype on read (None: as stored, bf16 or fp32).
    allow_mixed: accept features of several configurations (``store.config_hashes`` lists them).
    config_hash: read only the features of this configuration (a folder that ``--allow-mixed`` filled).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        dtype: torch.dtype | None = None,
        allow_mixed: bool = False,
        config_hash: str | None = None,
    ) -> None:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError("FeatureStore needs at least one output folder or index.jsonl")
        self.dtype = dtype
        self._entries: dict[str, dict[str, Any]] = {}
        for path in map(Path, paths):
            for entry in folder_entries(path):
                if config_hash is not None and entry.get("config_hash") != config_hash:
                    continue
                if (other := self._entries.get(entry["id"])) is not None:
                    raise ValueError(
                        f"clip {entry['id']!r} is stored twice: in {other['path']} (config {other.get('config_hash')})"
                        f" and {entry['path']} (config {entry.get('config_hash')}); read one folder, or pick one "
                        "configuration with config_hash="
                    )
                self._entries[entry["id"]] = entry
        self.config_hashes = sorted({e["config_hash"] for e in self._entries.values()})
        if len(self.config_hashes) > 1 and not allow_mixed:
            raise ValueError(
                f"these features come from {len(self.config_hashes)} configurations ({', '.join(self.config_hashes)}; "
                "see each folder's meta.json): read them as separate stores, pick one with config_hash=, or pass "
                "allow_mixed=True"
            )
        self._open: OrderedDict[Path, Any] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, clip_id: str) -> torch.Tensor:
        entry = self.entry(clip_id)
        tensor = self._handle(entry["path"]).get_tensor(entry["key"])
        return tensor if self.dtype is None else tensor.to(self.dtype)

    def entry(self, clip_id: str) -> dict[str, Any]:
        """The index entry of a clip: id, shard, key, rows, dim, dtype, tag, config_hash, samples, ..."""
        try:
            return self._entries[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in this store ({len(self)} clips)") from None

    def stored_shape(self, clip_id: str) -> tuple[int, ...]:
        """The tensor's shape as its shard header gives it (no data read)."""
        entry = self.entry(clip_id)
        return tuple(self._handle(entry["path"]).get_slice(entry["key"]).get_shape())

    def dataset(self, ids: Sequence[str] | None = None) -> FeatureDataset:
        """A torch ``Dataset`` of ``{"id", "features"}`` over ``ids`` (default: every clip, in index order)."""
        return FeatureDataset(self, list(self) if ids is None else list(ids))

    def _handle(self, path: Path) -> Any:
        if self._pid != os.getpid():  # a forked data-loader worker opens its own handles
            self._open.clear()
            self._pid = os.getpid()
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        handle = safe_open(str(path), "pt")
        self._open[path] = handle
        if len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)
        return handle

    def __getstate__(self) -> dict[str, Any]:  # spawned workers get the index, not open files
        return {**self.__dict__, "_open": OrderedDict()}


class FeatureDataset(Dataset):
    """``{"id": clip id, "features": [rows, D] tensor}`` per clip of a :class:`FeatureStore`."""

    def __init__(self, store: FeatureStore, ids: list[str]) -> None:
        self.store = store
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip_id = self.ids[index]
        return {"id": clip_id, "features": self.store[clip_id]}
