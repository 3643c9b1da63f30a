"""SIGKILL the extract command mid-run, run it again: the index and tensors equal those of an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers.corpus import TINY_KWARGS

from contaudio.cli import main
from contaudio.extract import ExtractOptions, FeatureStore, RankInfo, read_manifest, run_extract, shards
from contaudio.extract.shards import INDEX_FILE, finished_shards, read_jsonl

CLIPS = 48
KILL_TIMEOUT_S = 120.0  # the child must reach the stalled shard within this
STALL_AT_SHARD = 2  # the child is killed while writing its third shard
OPTIONS = {"workers": 1, "max_frames": 400, "max_clips": 2, "shard_mb": 0.004}  # about one batch per shard


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """48 noise clips of 0.5 .. 2.5 s: about 24 shards of two clips."""
    root = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(3)
    for i in range(CLIPS):
        soundfile.write(root / f"{i:02d}.wav", rng.standard_normal(int(rng.uniform(0.5, 2.5) * 16000)) * 0.1, 16000)
    return root


def command(manifest: Path, out: Path) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    return ["extract", str(manifest), "--out", str(out), "--tag", TINY_KWARGS["encoder_hf_model_tag"],
            "--weights", "random", "--dtype", "float32", "--no-progress", *flags]  # fmt: skip


def run_in_own_group(argv: list[str]) -> None:
    """The child: its own process group (its data-loader worker dies with it), then the CLI, whose third shard and
    every later one hang between being written and being renamed: the SIGKILL lands while a shard is half done.
    (By shard number, not by the shards finished so far: the writer threads publish concurrently, and two of them
    could both count the same number and pass.)"""
    os.setsid()
    torch.set_num_threads(1)
    publish = shards.publish

    def stalling_publish(temporary: Path, final: Path) -> None:
        if (parsed := shards.parse_shard_name(final.name)) and parsed[1] >= STALL_AT_SHARD:
            time.sleep(KILL_TIMEOUT_S)
        publish(temporary, final)

    shards.publish = stalling_publish
    main(argv)


def stalled(out: Path) -> list[str]:
    return [p.name for p in out.glob(".shard-*.tmp-*")]


def kill_mid_shard(argv: list[str], out: Path) -> tuple[int, list[str]]:
    """Run ``contaudio extract`` in a child process; SIGKILL its process group once it is writing a shard after
    ``STALL_AT_SHARD`` finished ones. Returns the finished shards and the half-written files at the kill."""
    child = multiprocessing.get_context("fork").Process(target=run_in_own_group, args=(argv,))
    child.start()
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not (out.is_dir() and len(finished_shards(out)) == STALL_AT_SHARD and (partial := stalled(out))):
            if not child.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the child wrote no shard (exit code {child.exitcode})")
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a child that died by itself has no group left
            os.killpg(child.pid, signal.SIGKILL)
        child.join(30)
    return len(finished_shards(out)), partial


def test_killed_run_resumes_to_the_uninterrupted_result(manifest, tmp_path) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    options = ExtractOptions(out=reference, **OPTIONS)
    planned = run_extract(read_manifest(manifest), TINY_KWARGS, options, RankInfo())["shards_written"]
    shards_at_kill, partial = kill_mid_shard(command(manifest, resumed), resumed)
    assert shards_at_kill == STALL_AT_SHARD < planned and partial and not (resumed / INDEX_FILE).exists()
    main(command(manifest, resumed))
    hidden = [p.name for p in resumed.iterdir() if p.name.startswith(".")]
    assert hidden == [".lock-r0000"]  # the half-written shard is gone; the lock file stays (the kill released it)
    assert read_jsonl(resumed / INDEX_FILE) == read_jsonl(reference / INDEX_FILE)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["shards_written"] == planned - shards_at_kill
    assert {p.name: p.read_bytes() for p in finished_shards(resumed)} == {
        p.name: p.read_bytes() for p in finished_shards(reference)
    }  # the same plan: byte-identical shards
    expected, got = FeatureStore(reference), FeatureStore(resumed)
    for clip_id in expected:
        assert torch.equal(got[clip_id], expected[clip_id]), clip_id
