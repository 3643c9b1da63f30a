"""``contaudio extract --mode lengths --espnet``: ESPnet 202611's own ``bin/prepare_length_stats.py`` output, exactly.

ESPnet's script runs through ``python -m contaudio.integrations.espnet`` (so its job builds contaudio's class) on
the tiny recipe; contaudio's command reads the same data json and YAML. The files must be equal line for line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from integration.recipe import DATA_NAME, TASK, prepare_dataset_json

from contaudio.integrations.espnet.stats import UnreadableSamples, espnet_stats

STATS_FILE = f"stats_{TASK}_{DATA_NAME}.jsonl"
BROKEN = ("bad_corrupt", "bad_missing")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def espnet_script(train_yaml: Path, specifier: str, out: Path, workers: int = 1) -> subprocess.CompletedProcess:
    """ESPnet's length-stats script, with contaudio's class registered by the entry point."""
    return run(["-m", "contaudio.integrations.espnet", "espnet2.speechlm.bin.prepare_length_stats",
                "--train-config", str(train_yaml), "--output-dir", str(out), "--num-workers", str(workers),
                "--train-unregistered-specifier", specifier], cwd=out.parent)  # fmt: skip


def contaudio_command(train_yaml: Path, specifier: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run(["-m", "contaudio", "extract", "--mode", "lengths", "--espnet", "--train-config", str(train_yaml),
                "--specifier", specifier, "--out", str(out), *extra], cwd=out.parent)  # fmt: skip


def stats_lines(out: Path) -> list[str]:
    return (out / STATS_FILE).read_text().splitlines()


@pytest.fixture(scope="module")
def espnet_lines(recipe, tmp_path_factory) -> list[str]:
    """ESPnet's own stats file of the recipe, one worker (lines in the data json's order)."""
    out = tmp_path_factory.mktemp("espnet") / "stats"
    done = espnet_script(recipe.train_yaml, recipe.specifier, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return stats_lines(out)


def test_same_file_as_espnet_script(recipe, espnet_lines, tmp_path) -> None:
    out = tmp_path / "stats"
    done = contaudio_command(recipe.train_yaml, recipe.specifier, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [STATS_FILE]
    assert stats_lines(out) == espnet_lines  # same ids, counts and order
    assert [next(iter(json.loads(line))) for line in espnet_lines] == sorted(recipe.clips)


@pytest.fixture
def broken(recipe, tmp_path) -> tuple[str, list[str]]:
    """The recipe's corpus plus a missing and a corrupt clip: (specifier, the good ids).

    (A WAV cut short is not unreadable: libsndfile, hence ESPnet's reader and soundfile.info alike, read the
    frames it holds.)"""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    corrupt = corpus / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    paths = {"bad_corrupt": corrupt, "bad_missing": corpus / "missing.wav"}
    scp = (recipe.corpus / "wav.scp").read_text() + "".join(f"{key} {path}\n" for key, path in paths.items())
    text = (recipe.corpus / "text").read_text() + "".join(f"{key} hello world\n" for key in paths)
    (corpus / "wav.scp").write_text(scp)
    (corpus / "text").write_text(text)
    data_json = prepare_dataset_json(corpus, tmp_path / "data.json")
    return f"{TASK}:{DATA_NAME}:{data_json}", sorted(recipe.clips)


def test_unreadable_clips_fail_listing_their_ids(recipe, broken, tmp_path) -> None:
    specifier, _ = broken
    out = tmp_path / "stats"
    done = contaudio_command(recipe.train_yaml, specifier, out)
    assert done.returncode == 1
    assert all(key in done.stderr for key in BROKEN) and "--espnet-drop-unreadable" in done.stderr
    assert not (out / STATS_FILE).exists()
    assert espnet_script(recipe.train_yaml, specifier, tmp_path / "espnet").returncode != 0  # ESPnet fails too


def test_drop_unreadable_writes_a_data_json_espnet_can_batch(recipe, espnet_lines, broken, tmp_path) -> None:
    from espnet2.speechlm.dataloader.iterator import DataIteratorFactory

    specifier, good = broken
    out = tmp_path / "stats"
    with pytest.raises(UnreadableSamples) as refused:
        espnet_stats(recipe.train_yaml, [specifier], out)
    assert sorted(refused.value.errors) == list(BROKEN)
    [result] = espnet_stats(recipe.train_yaml, [specifier], out, drop_unreadable=True)
    assert sorted(result.dropped) == list(BROKEN) and stats_lines(out) == espnet_lines
    filtered = json.loads(result.data_json.read_text())
    assert filtered["samples"] == good and result.data_json.name == f"data_{TASK}_{DATA_NAME}.json"
    factory = DataIteratorFactory([f"{TASK}:{DATA_NAME}:{result.data_json}"], stats_dir=out, batch_size=10_000)
    assert sorted(key[2] for batch in factory.batched_examples for key in batch) == good  # no KeyError, none lost


def test_existing_stats_are_kept_as_espnet_does(recipe, tmp_path) -> None:
    out = tmp_path / "stats"
    out.mkdir()
    (out / STATS_FILE).write_text('{"kept": 1}\n')
    [result] = espnet_stats(recipe.train_yaml, [recipe.specifier], out)
    assert result.skipped and (out / STATS_FILE).read_text() == '{"kept": 1}\n'


def test_cli_refusals_exit_2(recipe, tmp_path) -> None:
    shutil.copy(recipe.train_yaml, tmp_path / "train.yaml")
    out = tmp_path / "stats"
    no_spec = run(["-m", "contaudio", "extract", "--mode", "lengths", "--espnet", "--out", str(out)], cwd=tmp_path)
    assert no_spec.returncode == 2 and "--specifier" in no_spec.stderr
    features = contaudio_command(tmp_path / "train.yaml", recipe.specifier, out, "--mode", "features")
    assert features.returncode == 2 and "--mode lengths" in features.stderr
