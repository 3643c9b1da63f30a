"""The entry points: ``python -m contaudio extract`` / ``extract-index`` and ``python -m experiments.extract``."""

from __future__ import annotations

import json

import pytest
from helpers.corpus import BAD_IDS, TINY_KWARGS
from helpers.espnet_hub import hide_espnet
from helpers.hydra_compose import compose_config

from contaudio import FeatureStore
from contaudio.cli import main
from contaudio.extract.shards import INDEX_FILE, read_jsonl
from experiments.extract import run

TINY = ["--tag", TINY_KWARGS["encoder_hf_model_tag"], "--weights", "random", "--dtype", "fp32"]


def test_cli_lengths_per_rank_then_one_file(corpus, tmp_path, capsys) -> None:
    for rank in (0, 1):
        main(["extract", str(corpus.manifest), "--out", str(tmp_path), "--mode", "lengths", "--workers", "0",
              "--rank", str(rank), "--world-size", "2", *TINY])  # fmt: skip
    assert json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "}")["rank"] == 1
    main(["extract-index", str(tmp_path)])
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "lengths.jsonl")) == sorted(corpus.good_ids)
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "errors.jsonl")) == sorted(BAD_IDS)


def test_cli_espnet_stats_refused_without_espnet(tmp_path, capsys, monkeypatch) -> None:
    """``--espnet`` computes ESPnet's stats with ESPnet's own code: without ESPnet it says so (exit 2).

    (With ESPnet, tests/integration/test_stats.py runs ``--espnet`` for real.)"""
    hide_espnet(monkeypatch)
    spec = f"audio_to_text:train:{tmp_path / 'data.json'}"
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--mode", "lengths", "--espnet", "--train-config", str(tmp_path / "train.yaml"),
              "--specifier", spec, "--out", str(tmp_path / "stats")])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "ESPnet's SpeechLM is not importable" in err and "espnet[speechlm]" in err
    assert not (tmp_path / "stats").exists()


def test_cli_espnet_refuses_an_input_and_extract_needs_one(corpus, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(corpus.manifest), "--mode", "lengths", "--espnet", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--specifier" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--mode", "lengths", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "extract needs INPUT" in capsys.readouterr().err


def test_cli_features_with_verify(corpus, tmp_path, capsys) -> None:
    main(["extract", str(corpus.manifest), "--out", str(tmp_path), "--workers", "0", "--verify", "2",
          "--store-dtype", "bf16", *TINY])  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] and summary["verify"]["values_checked"] == 2
    assert len(FeatureStore(tmp_path)) == len(corpus.good_ids) == len(read_jsonl(tmp_path / INDEX_FILE))
    with pytest.raises(SystemExit) as exit_info:
        main(["extract-index", str(tmp_path), str(tmp_path)])
    assert exit_info.value.code == 2 and "several folders" in capsys.readouterr().err


def test_cli_refuses_another_configuration_with_a_message_not_a_traceback(corpus, tmp_path, capsys) -> None:
    main(["extract", str(corpus.manifest), "--out", str(tmp_path), "--workers", "0", *TINY])
    other = ["--tag", "contaudio/tiny-qwen3-asr", "--weights", "random", "--dtype", "fp32"]
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(corpus.manifest), "--out", str(tmp_path), "--workers", "0", *other])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "another configuration" in err and "--overwrite" in err


def test_hydra_experiment_records_the_summary(corpus, tmp_path) -> None:
    out = tmp_path / "features"
    record = run(compose_config([*overrides(corpus, tmp_path, out), "dtype=fp32", "extract.verify=1"]))
    assert record["status"] == "ok" and record["metrics"]["passed"]
    assert record["metrics"]["clips_encoded"] == len(corpus.good_ids) and record["metrics"]["errors"] == len(BAD_IDS)
    assert json.loads((tmp_path / "record-extract.json").read_text())["metrics"]["config_hash"]
    lengths = run(compose_config([*overrides(corpus, tmp_path, tmp_path / "lengths"), "extract.mode=lengths"]))
    assert lengths["status"] == "ok" and lengths["metrics"]["clips_ok"] == len(corpus.good_ids)


def overrides(corpus, record_dir, out) -> list[str]:
    """The tiny card on one thread, tracker off, failures fatal."""
    return ["encoder=tiny_qwen_omni", "tracker=none", "device.threads=1", "strict=true", f"output_dir={record_dir}",
            f"extract.input={corpus.manifest}", f"extract.out={out}", "extract.workers=0"]  # fmt: skip
