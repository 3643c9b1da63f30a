"""A Lhotse storage backend that reads one clip's features from a contaudio shard (needs ``lhotse``).

The CutSet :func:`contaudio.extract.outputs.write_lhotse_cuts` writes names this backend in each
cut's ``Features``: ``storage_type="contaudio_safetensors"``, ``storage_path`` the shard file,
``storage_key`` the clip's tensor key. Lhotse resolves ``storage_type`` through its reader registry
in the process that loads the features, so call :func:`register_lhotse_reader` there first (and in
data-loader workers: ``worker_init_fn=register_lhotse_reader``; a spawned worker does not inherit it).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from lhotse.features.io import FeaturesReader, get_reader, register_reader
from safetensors import safe_open

LHOTSE_STORAGE_TYPE = "contaudio_safetensors"
OPEN_SHARDS = 16  # shard files this process keeps open (memory-mapped) for the reader
WIDENED = (torch.bfloat16, torch.float16)  # dtypes numpy lacks or lhotse's consumers rarely take: read as float32

_handles: OrderedDict[tuple[int, str], Any] = OrderedDict()


def _handle(path: str) -> Any:
    key = (os.getpid(), path)  # a forked worker opens its own handles
    if key in _handles:
        _handles.move_to_end(key)
        return _handles[key]
    handle = _handles[key] = safe_open(path, "pt")
    if len(_handles) > OPEN_SHARDS:
        _handles.popitem(last=False)
    return handle


class ContaudioShardReader(FeaturesReader):
    """Reads ``[rows, D]`` features of one clip (``key``) from a contaudio shard (``storage_path``) as numpy.

    Rows ``left_offset_frames:right_offset_frames`` only are read. bf16/fp16 features are returned as
    float32 (exact: every bf16/fp16 value is a float32 value); fp32 as stored.
    """

    name = LHOTSE_STORAGE_TYPE

    def __init__(self, storage_path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.storage_path = os.fspath(storage_path)

    def read(self, key: str, left_offset_frames: int = 0, right_offset_frames: int | None = None) -> np.ndarray:
        rows = _handle(self.storage_path).get_slice(key)[left_offset_frames:right_offset_frames]
        return (rows.float() if rows.dtype in WIDENED else rows).numpy()


def register_lhotse_reader(_worker_id: int | None = None) -> None:
    """Register :class:`ContaudioShardReader` with Lhotse (idempotent). Takes an ignored argument so it can be a
    DataLoader ``worker_init_fn`` itself."""
    if get_reader(LHOTSE_STORAGE_TYPE) is not ContaudioShardReader:
        register_reader(ContaudioShardReader)
