"""FeatureStore: a mapping id -> tensor over one or many folders, a Dataset for DataLoader workers, no encoder."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from contaudio import FeatureStore
from contaudio.extract.shards import INDEX_FILE, read_jsonl, write_jsonl_atomic


def test_a_mapping_of_clip_ids(extracted, corpus) -> None:
    store = FeatureStore(extracted)
    assert len(store) == len(corpus.good_ids) and "a" in store and "missing" not in store
    assert store["a"].shape == (store.entry("a")["rows"], 48) == store.stored_shape("a")
    assert dict(store.items()).keys() == set(store)
    assert FeatureStore(extracted / INDEX_FILE, dtype=torch.bfloat16)["a"].dtype == torch.bfloat16
    with pytest.raises(KeyError, match="clip 'missing' is not in this store"):
        store["missing"]


def test_a_dataset_for_data_loader_workers(extracted) -> None:
    store = FeatureStore(extracted)
    loader = DataLoader(store.dataset(), batch_size=None, num_workers=2, timeout=60)
    items = {item["id"]: item["features"] for item in loader}
    assert items.keys() == set(store)
    for clip_id, features in items.items():
        assert torch.equal(features, store[clip_id])


def test_reads_shard_headers_when_the_index_is_behind(extracted, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    index = read_jsonl(out / INDEX_FILE)
    write_jsonl_atomic(out / INDEX_FILE, [e for e in index if e["shard"] != index[0]["shard"]])  # a shard missing
    assert set(FeatureStore(out)) == {e["id"] for e in index}
    (out / INDEX_FILE).unlink()
    assert set(FeatureStore(out)) == {e["id"] for e in index}


def test_many_folders_read_as_one(extracted, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(extracted, copy)
    with pytest.raises(ValueError, match=r"clip '.*' is stored twice"):
        FeatureStore([extracted, copy])
    index = read_jsonl(copy / INDEX_FILE)
    moved = [{**e, "id": f"other/{e['id']}", "config_hash": "elsewhere"} for e in index]
    write_jsonl_atomic(copy / INDEX_FILE, moved)  # same tensors under new ids, as from another configuration
    with pytest.raises(ValueError, match="come from 2 configurations"):
        FeatureStore([extracted, copy])
    both = FeatureStore([extracted, copy], allow_mixed=True)
    assert len(both) == 2 * len(index) and torch.equal(both["other/a"], both["a"])
    with pytest.raises(FileNotFoundError, match="holds no feature shards"):
        FeatureStore(tmp_path)
