"""Both modes end to end on the tiny card: lengths without decoding, features equal to encoding each clip alone,
bad clips recorded while the job goes on, reruns that skip finished shards, ranks that add up to one run."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile
import torch
from helpers.corpus import BAD_IDS, TINY_KWARGS, decoded

from contaudio import ContinuousAudioIO, FeatureStore
from contaudio.conformance import max_error, tolerance_for
from contaudio.extract import ExtractOptions, OutputMismatchError, RankInfo, run_extract, write_index
from contaudio.extract.run import build_io
from contaudio.extract.shards import INDEX_FILE, read_jsonl

SINGLE = RankInfo()


@pytest.fixture(scope="module")
def encoder_io() -> ContinuousAudioIO:
    return ContinuousAudioIO(**TINY_KWARGS)


def test_lengths_mode_reads_headers_only(corpus, lengths_io, tmp_path, monkeypatch) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("lengths mode decoded audio")

    monkeypatch.setattr(soundfile, "read", no_decoding)
    assert build_io(TINY_KWARGS, "lengths", SINGLE).encoder is None
    options = ExtractOptions(out=tmp_path, mode="lengths", workers=0)
    summary = run_extract(corpus.clips(), TINY_KWARGS, options, SINGLE)
    monkeypatch.undo()
    clips = {c.id: c for c in corpus.clips()}
    lengths = read_jsonl(tmp_path / "lengths.jsonl")
    assert [r["id"] for r in lengths] == corpus.good_ids  # manifest order
    for record in lengths:
        wav, rate = decoded(clips[record["id"]])
        mel = lengths_io.preprocess((wav, rate))[1][1]
        assert record["rows"] == lengths_io.find_length((wav, rate)) and record["mel_frames"] == mel.shape[0]
        assert record["samples"] == pytest.approx(wav.shape[1] * 16000 / rate, abs=1)
    errors = read_jsonl(tmp_path / "errors.jsonl")
    assert [(e["id"], e["stage"]) for e in errors] == [(i, "probe") for i in BAD_IDS]
    assert "file not found" in errors[0]["error"] and errors[0]["where"].endswith("clips.jsonl:8")
    assert summary["clips"] == len(clips) and summary["errors"] == len(BAD_IDS)
    assert summary["clips_ok"] == len(corpus.good_ids) and summary["rows"] == sum(r["rows"] for r in lengths)


def test_features_equal_each_clip_encoded_alone(extracted, corpus, encoder_io) -> None:
    store = FeatureStore(extracted)
    assert list(store) != corpus.good_ids and sorted(store) == sorted(corpus.good_ids)  # stored by length
    tolerance = tolerance_for(torch.float32)
    for clip in corpus.clips():
        if clip.id in BAD_IDS:
            continue
        _, (rows, mel), _ = encoder_io.preprocess(decoded(clip))
        with torch.inference_mode():
            (alone,) = encoder_io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        stored = store[clip.id]
        assert stored.shape == (rows, encoder_io.feature_dim()) == alone.shape, clip.id
        assert max_error(stored, alone)[0] <= tolerance.bound(alone), clip.id
    assert store["f"].shape == (0, encoder_io.feature_dim())  # too short for a row: stored empty
    entry = store.entry("a")
    assert entry["tag"] == TINY_KWARGS["encoder_hf_model_tag"] and entry["dtype"] == "float32"
    assert {"config_hash", "contaudio_version", "rows", "dim", "shard", "key"} <= set(entry)
    summary = json.loads((extracted / "summary.json").read_text())
    assert summary["shards_written"] > 2 and summary["errors"] == len(BAD_IDS)
    assert 0 <= summary["padding_fraction"] < 0.5 and summary["clips_encoded"] == len(corpus.good_ids)


def test_a_rerun_skips_finished_shards_and_a_new_config_is_refused(extracted, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    before = {p.name: p.read_bytes() for p in out.glob("shard-*")}
    options = ExtractOptions(out=out, workers=0, max_frames=600, shard_mb=0.02)
    summary = run_extract(corpus.clips(), TINY_KWARGS, options, SINGLE)
    assert summary["shards_written"] == 0 and summary["clips_skipped_done"] == len(corpus.good_ids)
    assert {p.name: p.read_bytes() for p in out.glob("shard-*")} == before
    bf16 = ExtractOptions(out=out, workers=0, store_dtype="bf16")
    with pytest.raises(OutputMismatchError, match="store_dtype: 'float32' -> 'bfloat16'"):
        run_extract(corpus.clips(), TINY_KWARGS, bf16, SINGLE)
    replaced = ExtractOptions(out=out, workers=0, store_dtype="bf16", overwrite=True)
    run_extract(corpus.clips(), TINY_KWARGS, replaced, SINGLE)
    store = FeatureStore(out)
    assert len(store) == len(corpus.good_ids) and {store[i].dtype for i in store} == {torch.bfloat16}


def test_ranks_and_workers_add_up_to_one_run(extracted, corpus, tmp_path) -> None:
    """Two ranks into one folder (one with data-loader workers), merged: the single run's features."""
    for rank, workers in ((0, 2), (1, 0)):
        options = ExtractOptions(out=tmp_path, workers=workers, max_frames=600, shard_mb=0.02)
        summary = run_extract(corpus.clips(), TINY_KWARGS, options, RankInfo(rank, 2))
        assert (tmp_path / f"summary-r{rank:04d}-of-0002.json").is_file() and summary["world_size"] == 2
    write_index([tmp_path], tmp_path)
    ranks, single = FeatureStore(tmp_path), FeatureStore(extracted)
    assert sorted(ranks) == sorted(single)
    assert {e["shard"][:11] for e in read_jsonl(tmp_path / INDEX_FILE)} == {"shard-r0000", "shard-r0001"}
    for clip_id in single:
        torch.testing.assert_close(ranks[clip_id], single[clip_id], atol=1e-5, rtol=1e-5)
