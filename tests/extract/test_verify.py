"""verify passes on a true store and fails on a corrupted tensor or a wrong row count, naming the clip."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
from helpers.corpus import TINY_KWARGS

from contaudio import ContinuousAudioIO, FeatureStore
from contaudio.extract import ExtractOptions, RankInfo, run_extract, verify_store
from contaudio.extract.probe import ClipError, probe
from contaudio.extract.shards import read_jsonl, shard_entries, write_index, write_shard
from contaudio.extract.verify import storage_tolerance


@pytest.fixture(scope="module")
def encoder_io() -> ContinuousAudioIO:
    return ContinuousAudioIO(**TINY_KWARGS)


def probed(io, clips) -> dict:
    lengths = {}
    for clip in clips.values():
        with contextlib.suppress(ClipError):
            lengths[clip.id] = probe(clip, io)
    return lengths


def rewrite(out, clip_id: str, change) -> None:
    """Rewrite the shard holding ``clip_id`` with ``change(tensor, entry)`` applied to that clip."""
    entry = FeatureStore(out).entry(clip_id)
    store = FeatureStore(out)
    entries = [{k: v for k, v in e.items() if k != "shard"} for e in shard_entries(entry["path"])]
    tensors = {e["key"]: store[e["id"]].clone() for e in entries}
    for e in entries:
        if e["id"] == clip_id:
            tensors[e["key"]] = change(tensors[e["key"]], e)
    write_shard(out, entry["path"].name, tensors, entries)
    write_index([out], out)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda t, e: t + torch.where(torch.arange(t.shape[0])[:, None] == 3, 1.0, 0.0), "differ from a fresh encode"),
        (lambda t, e: e.update(rows=e["rows"] - 1) or t[:-1], "find_length 57"),  # a consistent but wrong count
        (lambda t, e: t[:-1], "stored tensor [56, 48], index rows 57"),  # the tensor lost a row
    ],
    ids=["values", "row_count", "index"],
)
def test_verify_fails_on_a_corrupted_store(extracted, corpus, encoder_io, tmp_path, change, fragment) -> None:
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    clips = {c.id: c for c in corpus.clips()}
    lengths = probed(encoder_io, clips)
    assert lengths["a"].rows == 57
    assert verify_store(FeatureStore(out), encoder_io, clips, lengths, n=len(clips)).passed
    rewrite(out, "a", change)
    report = verify_store(FeatureStore(out), encoder_io, clips, lengths, n=len(clips))
    assert not report.passed and all("clip 'a'" in failure for failure in report.failures)
    assert fragment in report.failures[0]


def test_a_run_with_verify_reports_it(extracted, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    rewrite(out, "c", lambda t, e: t * 2)
    options = ExtractOptions(out=out, workers=0, max_frames=600, shard_mb=0.02, verify=len(corpus.good_ids))
    summary = run_extract(corpus.clips(), TINY_KWARGS, options, RankInfo())
    assert summary["passed"] is False  # every clip re-encoded but f (0 rows: its length check is the check)
    assert summary["verify"]["values_checked"] == len(corpus.good_ids) - 1
    assert summary["verify"]["lengths_checked"] == len(read_jsonl(out / "index.jsonl"))
    assert "clip 'c'" in summary["verify"]["failures"][0]


def test_the_tolerance_is_the_coarser_dtype() -> None:
    assert storage_tolerance(torch.bfloat16, torch.float32) == storage_tolerance(torch.float32, torch.bfloat16)
    assert storage_tolerance(torch.float32, torch.float32).atol < storage_tolerance(torch.float32, torch.float16).atol
