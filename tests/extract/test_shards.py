"""Shards appear whole or not at all, carry their index entries, and a folder refuses another configuration."""

from __future__ import annotations

import json

import pytest
import torch

from contaudio.extract.pipeline import BatchJob, BatchWriter, StageTimes
from contaudio.extract.shards import (
    INDEX_FILE,
    META_FILE,
    OutputMismatchError,
    done_ids,
    finished_shards,
    merge_parts,
    prepare_output,
    read_jsonl,
    remove_temporary,
    shard_entries,
    shard_name,
    write_index,
    write_shard,
)

CONFIG = {"tag": "contaudio/tiny-qwen2.5-omni", "compute_dtype": "float32", "store_dtype": "float32"}


def one_shard(directory, rank: int, seq: int, ids: list[str]):
    tensors = {clip_id: torch.full((i + 1, 4), float(i)) for i, clip_id in enumerate(ids)}
    entries = [{"id": clip_id, "key": clip_id, "rows": i + 1, "config_hash": "h"} for i, clip_id in enumerate(ids)]
    return write_shard(directory, shard_name(rank, seq), tensors, entries)


def test_a_shard_is_published_whole_with_its_entries(tmp_path) -> None:
    path = one_shard(tmp_path, 0, 0, ["a", "b"])
    assert [p.name for p in tmp_path.iterdir()] == ["shard-r0000-000000.safetensors"]  # no temporary left
    assert [(e["id"], e["rows"], e["shard"]) for e in shard_entries(path)] == [
        ("a", 1, path.name),
        ("b", 2, path.name),
    ]
    (tmp_path / ".shard-r0000-000001.safetensors.tmp-99").write_bytes(b"half a shard")  # a killed writer's leftover
    (tmp_path / ".shard-r0001-000000.safetensors.tmp-98").write_bytes(b"another rank's, maybe still running")
    assert finished_shards(tmp_path) == [path] and done_ids(tmp_path) == {"a", "b"}
    assert remove_temporary(tmp_path, rank=0) == 1
    assert sorted(p.name for p in tmp_path.iterdir())[0] == ".shard-r0001-000000.safetensors.tmp-98"


def test_the_writer_reports_its_errors(tmp_path) -> None:
    writer = BatchWriter(tmp_path / "gone", StageTimes(), max_pending=2)  # a folder that does not exist
    writer.submit(BatchJob(None, [({"id": "a"}, 0)], [], shard="shard-r0000-000000.safetensors", dim=2))
    with pytest.raises(RuntimeError, match=r"writing a shard into .*gone failed"):
        writer.close()


def test_another_configuration_is_refused_with_the_ways_out(tmp_path) -> None:
    first = prepare_output(tmp_path, CONFIG, "0.1.0", overwrite=False, allow_mixed=False, world_size=1)
    one_shard(tmp_path, 0, 0, ["a"])
    assert prepare_output(tmp_path, CONFIG, "0.1.0", overwrite=False, allow_mixed=False, world_size=1) == first
    changed = {**CONFIG, "store_dtype": "bfloat16"}
    with pytest.raises(OutputMismatchError) as err:
        prepare_output(tmp_path, changed, "0.1.0", overwrite=False, allow_mixed=False, world_size=1)
    message = str(err.value)
    assert "store_dtype: 'float32' -> 'bfloat16'" in message
    assert all(way in message for way in ("another output folder", "overwrite=true", "allow_mixed=true"))
    with pytest.raises(OutputMismatchError, match="ranks would let ranks delete each other's shards"):
        prepare_output(tmp_path, changed, "0.1.0", overwrite=True, allow_mixed=False, world_size=2)
    mixed = prepare_output(tmp_path, changed, "0.1.0", overwrite=False, allow_mixed=True, world_size=1)
    assert set(json.loads((tmp_path / META_FILE).read_text())["configs"]) == {first, mixed}
    (tmp_path / "notes.txt").write_text("mine")
    prepare_output(tmp_path, changed, "0.1.0", overwrite=True, allow_mixed=False, world_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, "notes.txt"]  # only extract's files went


def test_shards_without_meta_are_not_added_to(tmp_path) -> None:
    one_shard(tmp_path, 0, 0, ["a"])
    with pytest.raises(OutputMismatchError, match=r"no meta\.json"):
        prepare_output(tmp_path, CONFIG, "0.1.0", overwrite=False, allow_mixed=False, world_size=1)


def test_one_index_over_ranks_and_folders(tmp_path) -> None:
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    for folder in (run1, run2):
        folder.mkdir()
    one_shard(run1, 0, 0, ["a", "b"])
    one_shard(run1, 1, 0, ["c"])
    one_shard(run2, 0, 0, ["d"])
    index = read_jsonl(write_index([run1], run1))
    assert [(e["id"], e["shard"]) for e in index] == [("a", "shard-r0000-000000.safetensors"),
                                                       ("b", "shard-r0000-000000.safetensors"),
                                                       ("c", "shard-r0001-000000.safetensors")]  # fmt: skip
    merged = read_jsonl(write_index([run1, run2], tmp_path / "all"))
    assert [e["shard"] for e in merged][-1] == "../run2/shard-r0000-000000.safetensors"
    one_shard(run2, 0, 1, ["a"])
    with pytest.raises(ValueError, match="clip 'a' is in both"):
        write_index([run1, run2], tmp_path / "all")
    assert (tmp_path / "all" / INDEX_FILE).is_file()


def test_rank_parts_merge_into_one_file(tmp_path) -> None:
    assert merge_parts(tmp_path, "lengths") == (None, [])
    for rank in (1, 0):
        (tmp_path / f"lengths-r{rank:04d}-of-0002.jsonl").write_text(json.dumps({"id": f"r{rank}"}) + "\n")
    merged, ignored = merge_parts(tmp_path, "lengths")
    assert [r["id"] for r in read_jsonl(merged)] == ["r0", "r1"] and ignored == []
