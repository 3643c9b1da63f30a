"""The output folder stays safe on shared storage (issue 19, item 5): ids are data, one run per slice, mixed configs
encode, extract-index merges the current plan only, shards readable by colleagues, a plan that does not move
finished clips (byte-identical reruns), a non-zero exit when clips fail, refusals before any encoder is built."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
import torch
from helpers.corpus import BAD_IDS, TINY_KWARGS

from contaudio import ContinuousAudioIO, FeatureStore
from contaudio.cli import main
from contaudio.extract import ExtractOptions, RankInfo, read_manifest, run_extract, write_index
from contaudio.extract import run as extract_run
from contaudio.extract.lock import rank_lock
from contaudio.extract.outputs import FEATS_SCP, read_feats_scp
from contaudio.extract.probe import ClipError
from contaudio.extract.shards import INDEX_FILE, META_FILE, finished_shards, read_jsonl

SINGLE = RankInfo()
TINY = ["--tag", TINY_KWARGS["encoder_hf_model_tag"], "--weights", "random", "--dtype", "fp32", "--workers", "0"]
SMALL = {"workers": 0, "max_frames": 600, "max_clips": 1, "shard_mb": 0.001}  # one clip per shard


def write_manifest(path: Path, corpus, ids: list[str]) -> Path:
    """A JSONL manifest giving ``ids`` the corpus's readable files in turn (segments of c.wav make lengths vary)."""
    files = ["a.wav", "b.flac", "c.wav", "sub/d.wav", "sub/e.flac"]
    lines = []
    for i, clip_id in enumerate(ids):
        line = {"id": clip_id, "path": str(corpus.root / files[i % len(files)])}
        if i >= len(files):
            line |= {"path": str(corpus.root / "c.wav"), "start": 0.1 * i, "end": 0.1 * i + 0.3 + 0.07 * i}
        lines.append(line)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in finished_shards(out)}


@pytest.fixture
def no_encoder(monkeypatch):
    """Fail the test if an encoder is built (every refusal must come before)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was built before the refusal")

    monkeypatch.setattr(extract_run, "build_io", refuse)


# 1 --------------------------------------------------------------------------------------------------------------
def test_any_id_is_stored_safely(corpus, tmp_path) -> None:
    ids = ["__metadata__", "format", "a/b c", "ünïcode", "c000000"]
    manifest = write_manifest(tmp_path / "ids.jsonl", corpus, ids)
    out = tmp_path / "out"
    options = ExtractOptions(out=out, workers=0, max_frames=600, shard_mb=0.02, verify=len(ids))
    summary = run_extract(read_manifest(manifest), TINY_KWARGS, options, SINGLE)
    assert summary["passed"] and summary["clips_encoded"] == len(ids) and summary["verify"]["values_checked"] == 5
    write_index([out], out)
    store = FeatureStore(out)
    assert sorted(store) == sorted(ids) and store["__metadata__"].shape[1] == 48
    assert {e["key"] for e in read_jsonl(out / INDEX_FILE)}.isdisjoint(set(ids) - {"c000000"})  # keys are generated
    assert not torch.equal(store["c000000"], store["format"])  # an id equal to a generated key is still its own clip


def test_a_path_that_is_no_utf8_is_recorded_escaped(corpus, tmp_path) -> None:
    """A file Python can only name with a lone surrogate (``"\\udcff"`` in JSON, or a glob's non-UTF-8 name) that
    fails is written escaped into errors.jsonl (the run crashed writing it, leaving the file empty)."""
    manifest = tmp_path / "m.jsonl"
    bad = {"id": "bad", "path": str(tmp_path / "missing-\udcff.wav")}
    manifest.write_text(json.dumps(bad) + "\n" + json.dumps({"id": "ok", "path": str(corpus.root / "a.wav")}) + "\n")
    options = ExtractOptions(out=tmp_path / "out", mode="lengths", workers=0)
    summary = run_extract(read_manifest(manifest), TINY_KWARGS, options, SINGLE)
    assert summary["clips_ok"] == 1 and summary["errors"] == 1
    assert [(r["id"], r["path"]) for r in read_jsonl(tmp_path / "out" / "errors.jsonl")] == [("bad", bad["path"])]


# 2 --------------------------------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_slice_is_refused_naming_the_first(corpus, tmp_path, capsys, no_encoder) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with rank_lock(out, 0, 1):  # a run holding rank 0's slice (another open file: flock refuses even this process)
        with pytest.raises(SystemExit) as exit_info:
            main(["extract", str(corpus.manifest), "--out", str(out), *TINY])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and "another extract is writing rank 0" in err
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in err and "started 20" in err
    with rank_lock(out, 1, 2):  # rank 1 of 2 running: a run with 3 ranks would overlap its slice
        with pytest.raises(SystemExit) as exit_info:
            main(["extract", str(corpus.manifest), "--out", str(out), "--rank", "0", "--world-size", "3", *TINY])
        assert exit_info.value.code == 2 and "slices overlap" in capsys.readouterr().err


def test_a_stale_duplicate_is_read_once_not_a_dead_end(extracted, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    first = finished_shards(out)[0]
    shutil.copy(first, out / "shard-r0001-000000.safetensors")  # what two overlapping runs left before the lock
    write_index([out], out)
    index = read_jsonl(out / INDEX_FILE)
    assert len(index) == len({e["id"] for e in index}) == len(FeatureStore(out)) == len(FeatureStore(extracted))
    assert {e["shard"] for e in index if e["shard"].startswith("shard-r0001")} == set()  # the first copy is kept


# 3 --------------------------------------------------------------------------------------------------------------
def test_allow_mixed_encodes_the_new_configuration(extracted, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    mixed = ExtractOptions(out=out, workers=0, max_frames=600, shard_mb=0.02, store_dtype="bf16", allow_mixed=True)
    summary = run_extract(corpus.clips(), TINY_KWARGS, mixed, SINGLE)
    assert summary["clips_skipped_done"] == 0 and summary["clips_encoded"] == len(corpus.good_ids)
    configs = json.loads((out / META_FILE).read_text())["configs"]
    old = FeatureStore(extracted).config_hashes[0]
    assert set(configs) == {old, summary["config_hash"]}
    with pytest.raises(ValueError, match=r"stored twice.*config_hash="):
        FeatureStore(out)
    new = FeatureStore(out, config_hash=summary["config_hash"])
    assert len(new) == len(corpus.good_ids) and {new[i].dtype for i in new} == {torch.bfloat16}
    assert run_extract(corpus.clips(), TINY_KWARGS, mixed, SINGLE)["clips_skipped_done"] == len(corpus.good_ids)
    main(["extract-index", str(out), "--config-hash", summary["config_hash"]])  # the lists of one configuration
    listed = read_feats_scp(out / FEATS_SCP)
    assert set(listed) == set(new) and {Path(shard).name for shard, _ in listed.values()} == {
        new.entry(i)["shard"] for i in new
    }


# 4 --------------------------------------------------------------------------------------------------------------
def test_extract_index_merges_only_the_current_plans_ranks(corpus, tmp_path, capsys) -> None:
    for world in (2, 3):
        for rank in range(world):
            main(["extract", str(corpus.manifest), "--out", str(tmp_path), "--mode", "lengths", "--rank", str(rank),
                  "--world-size", str(world), *TINY])  # fmt: skip
    capsys.readouterr()
    main(["extract-index", str(tmp_path)])
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "lengths.jsonl")) == sorted(corpus.good_ids)
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "errors.jsonl")) == sorted(BAD_IDS)
    printed = capsys.readouterr().out
    assert "ignored 2 lengths file(s)" in printed and "lengths-r0001-of-0002.jsonl" in printed


def test_extract_index_says_when_ranks_are_missing_or_still_running(corpus, tmp_path, capsys) -> None:
    """Two of three ranks done: the index covers them, and the command says which rank is missing (exit 1); a rank
    still writing (its lock held) is refused at once, naming it (exit 2); a folder without output is refused."""
    for rank in range(2):
        main(["extract", str(corpus.manifest), "--out", str(tmp_path), "--mode", "lengths", "--rank", str(rank),
              "--world-size", "3", *TINY])  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["extract-index", str(tmp_path)])
    assert exit_info.value.code == 1 and "rank(s) [2] of 3 have not finished" in capsys.readouterr().err
    assert json.loads((tmp_path / "summary.json").read_text())["missing_ranks"] == [2]
    with rank_lock(tmp_path, 2, 3), pytest.raises(SystemExit) as exit_info:
        main(["extract-index", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "still being written by pid" in err and "rank 2 of 3" in err
    (empty := tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["extract-index", str(empty)])
    assert exit_info.value.code == 2 and "holds no extract output" in capsys.readouterr().err


# 5 --------------------------------------------------------------------------------------------------------------
def test_shards_get_the_permissions_of_the_other_outputs(corpus, tmp_path) -> None:
    before = os.umask(0o002)
    try:
        run_extract(corpus.clips(), TINY_KWARGS, ExtractOptions(out=tmp_path, workers=0, shard_mb=0.02), SINGLE)
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o664}, modes


# 6 --------------------------------------------------------------------------------------------------------------
def test_two_identical_runs_give_identical_shards_numbered_without_gaps(corpus, tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        run_extract(corpus.clips(), TINY_KWARGS, ExtractOptions(out=out, **SMALL), SINGLE)
    assert shard_bytes(one) == shard_bytes(two)
    assert [p.name for p in finished_shards(one)] == [f"shard-r0000-{n:06d}.safetensors" for n in range(7)]


def test_an_undecodable_clip_does_not_move_the_plan(corpus, tmp_path, monkeypatch, caplog) -> None:
    """A clip that fails to decode inside a finished shard is not retried by a rerun (which redoes only the shards
    the kill lost, byte for byte); --retry-failed puts it after every other shard. Its all-failed shard is
    written, so numbers have no gaps."""
    ids = [f"k{i:02d}" for i in range(10)]
    clips = read_manifest(write_manifest(tmp_path / "k.jsonl", corpus, ids))
    load = extract_run.load

    def broken(clip, length):
        if clip.id == "k03":
            raise ClipError("cannot decode k03", stage="decode")
        return load(clip, length)

    monkeypatch.setattr(extract_run, "load", broken)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_extract(clips, TINY_KWARGS, ExtractOptions(out=reference, **SMALL), SINGLE)
    expected = shard_bytes(reference)
    assert list(expected) == [f"shard-r0000-{n:06d}.safetensors" for n in range(10)]  # k03's shard included
    with caplog.at_level(logging.INFO, logger="contaudio.extract.store"):
        assert len(FeatureStore(reference)) == 9
    assert "does not list every shard" not in caplog.text  # k03's shard holds no clip: the index is whole
    run_extract(clips, TINY_KWARGS, ExtractOptions(out=resumed, **SMALL), SINGLE)
    for shard in finished_shards(resumed)[-4:]:  # a kill lost the last shards
        shard.unlink()
    monkeypatch.undo()  # k03 decodes now: still not retried without the flag
    summary = run_extract(clips, TINY_KWARGS, ExtractOptions(out=resumed, **SMALL), SINGLE)
    assert shard_bytes(resumed) == expected and summary["shards_written"] == 4
    assert summary["clips_failed_before"] == 1 and [e["id"] for e in read_jsonl(resumed / "errors.jsonl")] == ["k03"]
    retried = run_extract(clips, TINY_KWARGS, ExtractOptions(out=resumed, retry_failed=True, **SMALL), SINGLE)
    assert retried["clips_retried"] == retried["clips_encoded"] == 1 and retried["errors"] == 0
    after = shard_bytes(resumed)
    assert {k: v for k, v in after.items() if k in expected} == expected and len(after) == len(expected) + 1
    assert FeatureStore(resumed).entry("k03")["shard"] == "shard-r0000-000010.safetensors"


# 7 --------------------------------------------------------------------------------------------------------------
def test_a_run_where_every_clip_fails_exits_non_zero(corpus, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths read from the wrong folder
    manifest = tmp_path / "rel.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"x{i}", "path": f"wavs/{i}.wav"}) + "\n" for i in range(3)))
    for mode in ("lengths", "features"):
        with pytest.raises(SystemExit) as exit_info:
            main(["extract", str(manifest), "--out", str(tmp_path / mode), "--mode", mode, *TINY])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and "every clip failed (3 of 3)" in err, mode
    lengths = ["extract", str(corpus.manifest), "--out", str(tmp_path / "m"), "--mode", "lengths", *TINY]
    main([*lengths, "--max-errors", str(len(BAD_IDS))])
    with pytest.raises(SystemExit) as exit_info:
        main([*lengths, "--max-errors", str(len(BAD_IDS) - 1)])
    assert exit_info.value.code == 1 and "more than max_errors=2" in capsys.readouterr().err


# 8 --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("out_is_a_file", "is a file, not a folder"),
        ("out_under_a_file", "cannot write into the output folder"),
        ("verify_with_lengths", "--verify re-encodes stored features"),
        ("card_without_random_weights", "test card without weights; use weights='random'"),
        ("another_configuration", "another configuration"),
        ("hidden_states", "extract stores one [T, D] matrix per clip; returns='hidden_states'"),
        ("damaged_shard", "is not a readable safetensors shard"),
        ("max_clips_0", "max_frames, max_clips >= 1, got 512.0, 48000, 0"),
        ("shard_mb_nan", "shard_mb must be a finite size > 0"),
        ("shard_mb_inf", "shard_mb must be a finite size > 0"),
    ],
)
def test_refusals_are_one_line_before_the_encoder(corpus, extracted, tmp_path, capsys, no_encoder, case, fragment):
    out, extra = tmp_path / "out", []
    if case == "out_is_a_file":
        out.write_text("not a folder")
    elif case == "out_under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "verify_with_lengths":
        extra = ["--mode", "lengths", "--verify", "2"]
    elif case == "another_configuration":
        shutil.copytree(extracted, out)
        extra = ["--store-dtype", "bf16"]
    elif case == "hidden_states":
        extra = ["--returns", "hidden_states", "--layers", "-1"]
    elif case == "damaged_shard":
        shutil.copytree(extracted, out)
        os.truncate(finished_shards(out)[0], 1000)
    elif case == "max_clips_0":
        extra = ["--max-clips", "0"]
    elif case.startswith("shard_mb"):
        extra = ["--shard-mb", case.removeprefix("shard_mb_")]
    tiny = [a for a in TINY if a not in ("--weights", "random")] if case.startswith("card") else TINY
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(corpus.manifest), "--out", str(out), *tiny, *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err


def make_read_only(folder: Path, monkeypatch) -> None:
    """Writes into ``folder`` fail as on a read-only mount (root ignores mode bits, so the write is made to fail the
    way the kernel fails it there)."""
    write_bytes = Path.write_bytes

    def read_only(path: Path, data: bytes) -> int:
        if path.parent == folder:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)


def test_a_read_only_output_folder_is_refused(corpus, tmp_path, capsys, monkeypatch) -> None:
    """A folder this process cannot write into (:func:`make_read_only`)."""
    out = tmp_path / "ro"
    out.mkdir()
    make_read_only(out, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(corpus.manifest), "--out", str(out), *TINY])
    assert exit_info.value.code == 2 and "cannot write into the output folder" in capsys.readouterr().err


def test_extract_index_on_a_read_only_folder_is_refused(extracted, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "ro"
    shutil.copytree(extracted, out)
    make_read_only(out, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["extract-index", str(out)])
    assert exit_info.value.code == 2 and "cannot write into the output folder" in capsys.readouterr().err


def test_a_bug_is_not_recorded_as_an_undecodable_clip(corpus, tmp_path, monkeypatch) -> None:
    def bug(self, *args, **kwargs):
        raise TypeError("a programming error")

    monkeypatch.setattr(ContinuousAudioIO, "preprocess", bug)
    with pytest.raises(TypeError, match="a programming error"):
        run_extract(corpus.clips(), TINY_KWARGS, ExtractOptions(out=tmp_path, workers=0), SINGLE)
