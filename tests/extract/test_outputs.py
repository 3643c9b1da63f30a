"""Outputs people load directly: Lhotse cuts, ESPnet-style lists and stats, one summary over the ranks.

FeatureStore, Lhotse's ``cut.load_features()`` and the ``feats.scp`` reader must give the same tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.corpus import BAD_IDS, TINY_KWARGS

from contaudio import FeatureStore
from contaudio.cli import main
from contaudio.extract.outputs import (
    CUTS_FILE,
    FEATS_SCP,
    FEATS_SHAPE,
    STATS_FILE,
    FeatsScp,
    lhotse_duration,
    merge_summaries,
    read_feats_scp,
    read_shapes,
    register_lhotse_reader,
    row_period_s,
    write_outputs,
)

lhotse = pytest.importorskip("lhotse")

TINY = ["--tag", TINY_KWARGS["encoder_hf_model_tag"], "--weights", "random", "--dtype", "fp32"]


def check_agree(store: FeatureStore, folder: Path) -> None:
    """Every clip: the Lhotse cut, the feats.scp reader and the shapes file give the store's tensor, exactly."""
    register_lhotse_reader()
    cuts = lhotse.load_manifest(folder / CUTS_FILE)
    scp, shapes = FeatsScp(folder / FEATS_SCP), read_shapes(folder / FEATS_SHAPE)
    assert sorted(cuts.ids) == sorted(store) == sorted(scp) == sorted(shapes)
    for clip_id in store:
        stored, cut = store[clip_id], cuts[clip_id]
        assert torch.equal(scp[clip_id], stored) and scp[clip_id].dtype == stored.dtype
        loaded = cut.load_features()
        assert loaded.dtype == np.float32 and np.array_equal(loaded, stored.float().numpy()), clip_id
        assert (cut.num_frames, cut.num_features) == shapes[clip_id] == tuple(stored.shape)
        assert cut.frame_shift == row_period_s("qwen2_5_omni", 160, 16000) == 0.04
        assert cut.custom["contaudio"]["audio_duration_s"] == store.entry(clip_id)["duration_s"]


def check_stats(store: FeatureStore, path: Path) -> None:
    stats = np.load(path)
    rows = np.concatenate([store[i].double().numpy() for i in store])
    assert int(stats["count"]) == rows.shape[0]
    np.testing.assert_allclose(stats["sum"], rows.sum(0), rtol=1e-12)
    np.testing.assert_allclose(stats["sum_square"], (rows**2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(stats["mean"], rows.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["std"], rows.std(0), rtol=1e-8)


def test_store_lhotse_and_scp_agree(extracted, tmp_path) -> None:
    written = write_outputs([extracted], tmp_path, stats=True)
    assert sorted(p.name for p in written) == sorted([CUTS_FILE, FEATS_SCP, FEATS_SHAPE, STATS_FILE])
    store = FeatureStore(extracted)
    assert store.stored_shape("f") == (0, store.entry("f")["dim"])  # a clip too short for a row is a cut too
    check_agree(store, tmp_path)
    check_stats(store, tmp_path / STATS_FILE)
    shard, key = read_feats_scp(tmp_path / FEATS_SCP)["a"]
    assert Path(shard).is_absolute() and key == store.entry("a")["key"]


def test_cli_ranks_in_bf16_then_index_writes_every_output(corpus, tmp_path, capsys, caplog) -> None:
    """Two ranks store bf16; extract-index --stats writes the outputs (Lhotse widens to fp32, exactly) and one
    summary over the ranks, keeping theirs."""
    for rank in (0, 1):
        main(["extract", str(corpus.manifest), "--out", str(tmp_path), "--workers", "0", "--store-dtype", "bf16",
              "--rank", str(rank), "--world-size", "2", "--no-progress", "--stats", *TINY])  # fmt: skip
    assert not (tmp_path / CUTS_FILE).exists()  # a rank alone writes no outputs: extract-index does
    assert not (tmp_path / STATS_FILE).exists()  # --stats on a rank says where the stats come from
    assert f"extract-index {tmp_path} --stats` when all 2 ranks have finished" in caplog.text
    main(["extract-index", str(tmp_path), "--stats"])
    store = FeatureStore(tmp_path)
    assert {e["dtype"] for e in map(store.entry, store)} == {"bfloat16"}
    check_agree(store, tmp_path)
    check_stats(store, tmp_path / STATS_FILE)
    ranks = [json.loads((tmp_path / f"summary-r000{r}-of-0002.json").read_text()) for r in (0, 1)]
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert merged["ranks"] == [0, 1] and merged["missing_ranks"] == [] and merged["passed"]
    assert merged["clips"] == len(corpus.clips()) == sum(r["clips"] for r in ranks)
    assert merged["clips_ok"] == len(corpus.good_ids) and merged["clips_failed"] == len(BAD_IDS)
    totals = merged["store"]
    assert totals["clips"] == len(store) and totals["rows"] == sum(store.stored_shape(i)[0] for i in store)
    assert totals["feature_bytes"] == sum(store[i].numel() * 2 for i in store)
    assert totals["audio_s"] == pytest.approx(sum(store.entry(i)["duration_s"] for i in store))
    assert "wrote" in capsys.readouterr().out


def test_merged_summary_names_missing_ranks(tmp_path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"world_size": 3}))
    for rank in (0, 2):
        summary = {"mode": "lengths", "clips": 5, "clips_ok": 4, "errors": 1, "errors_by_stage": {"probe": 1},
                   "audio_hours": 0.5, "rows": 10, "passed": True}  # fmt: skip
        (tmp_path / f"summary-r000{rank}-of-0003.json").write_text(json.dumps(summary))
    (tmp_path / "summary-r0000-of-0002.json").write_text(json.dumps({"clips": 99}))  # an earlier plan: ignored
    merged = json.loads(merge_summaries(tmp_path).read_text())
    assert merged["missing_ranks"] == [1] and not merged["passed"]
    assert (merged["clips"], merged["clips_ok"], merged["clips_failed"], merged["rows"]) == (10, 8, 2, 20)
    assert merged["errors_by_stage"] == {"probe": 2} and merged["audio_hours"] == 1.0
    assert merge_summaries(tmp_path, world_size=1) is None  # a single process's summary.json is already whole


@pytest.mark.parametrize(("family", "shift"), [("qwen2_5_omni", 0.04), ("qwen3_omni", 0.08), ("whisper", 0.02)])
def test_lhotse_counts_exactly_rows_frames(family: str, shift: float) -> None:
    """The cut duration makes Lhotse's frame arithmetic give exactly ``rows``, even for a period that is no whole
    number of samples (Qwen3-Omni: 100 mel frames -> 13 rows)."""
    from lhotse.utils import compute_num_frames

    period = row_period_s(family, 160, 16000)
    assert period == pytest.approx(shift, rel=0.04)
    assert all(compute_num_frames(lhotse_duration(n, period, 16000), period, 16000) == n for n in range(0, 200_000, 7))


def test_feats_scp_reader_names_a_bad_line(tmp_path) -> None:
    (tmp_path / FEATS_SCP).write_text("a /x/shard.safetensors:c000000\nb no-key-here\n")
    with pytest.raises(ValueError, match=r"feats.scp:2: expected '<id> <shard path>:<tensor key>'"):
        read_feats_scp(tmp_path / FEATS_SCP)
