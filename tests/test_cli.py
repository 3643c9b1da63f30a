"""The end-to-end command on the committed speech clips."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from helpers.audio import SPEECH_DIR
from helpers.checkpoints import TINY_QWEN_OMNI
from safetensors.torch import load_file

from contaudio import cli
from contaudio.cli import main
from contaudio.encoders import FAMILIES, UNAVAILABLE
from contaudio.encoders.qwen2_5_omni import qwen2_5_omni_rows


def test_encode_prints_lengths_and_writes_features(tmp_path, capsys) -> None:
    files = sorted(SPEECH_DIR.glob("*.wav"))
    out = tmp_path / "feats.safetensors"
    main(["encode", *map(str, files), "--tag", TINY_QWEN_OMNI, "--weights", "random", "--dtype", "fp32",
          "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    feats = load_file(out)
    assert set(feats) == {f.stem for f in files}
    for line in printed.splitlines():
        name = line.split(" ")[0]
        if name.endswith(".wav"):
            _, duration, frames, rows, *_ = line.split()
            assert int(rows) == feats[name[:-4]].shape[0] == qwen2_5_omni_rows(int(frames))
            assert float(duration) > 1.0
    assert feats["quick_brown_fox_16k"].shape[1] == 48


def test_cards_lists_the_tiny_card(capsys) -> None:
    main(["cards"])
    assert TINY_QWEN_OMNI in capsys.readouterr().out


def test_long_file_on_a_30_s_encoder_needs_the_windows_policy(tmp_path, capsys) -> None:
    long = tmp_path / "long.wav"
    soundfile.write(long, np.zeros(31 * 16000, np.float32) + 0.01, 16000)
    common = ["encode", str(long), "--tag", "contaudio/tiny-whisper", "--weights", "random", "--dtype", "fp32"]
    with pytest.raises(SystemExit) as exited:
        main(common)
    assert exited.value.code == 1
    assert "--long-clip windows" in capsys.readouterr().err
    main([*common, "--long-clip", "windows"])
    assert "long.wav" in capsys.readouterr().out


def test_a_file_that_cannot_be_encoded_is_said_and_skipped_the_others_written(tmp_path, capsys) -> None:
    good = SPEECH_DIR / "quick_brown_fox_16k.wav"
    (empty := tmp_path / "empty.wav").write_bytes(b"")
    (garbage := tmp_path / "garbage.flac").write_bytes(b"not audio at all")
    soundfile.write(nan := tmp_path / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "feats.safetensors"
    with pytest.raises(SystemExit) as exited:
        main(["encode", str(empty), str(good), str(garbage), str(nan), "--tag", TINY_QWEN_OMNI, "--weights",
              "random", "--dtype", "fp32", "--out", str(out)])  # fmt: skip
    assert exited.value.code == 1
    said = capsys.readouterr().err
    assert all(f"{path}: " in said for path in (empty, garbage, nan)), said
    assert "3 of 4 files could not be encoded" in said and "NaN" in said
    assert set(load_file(out)) == {good.stem}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: [d / "missing.wav"], "no such file: "),
        (lambda d: [SPEECH_DIR / "quick_brown_fox_16k.wav", copied(d, "quick_brown_fox_16k.flac")], "share one"),
        (lambda d: [SPEECH_DIR / "quick_brown_fox_16k.wav", "--out", str(d)], "is a folder"),
        (lambda d: [SPEECH_DIR / "quick_brown_fox_16k.wav", "--out", str(d / "no" / "f.safetensors")], "not writable"),
    ],
    ids=["missing file", "two files one key", "out is a folder", "out's folder missing"],
)
def test_what_encode_could_not_finish_is_refused_before_building(make, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "ContinuousAudioIO", lambda **_: pytest.fail("built an encoder for a refused command"))
    args = [str(a) for a in make(tmp_path)]
    args += [] if "--out" in args else ["--out", str(tmp_path / "feats.safetensors")]
    with pytest.raises(SystemExit) as exited:
        main(["encode", *args, "--tag", TINY_QWEN_OMNI, "--weights", "random"])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def copied(folder, name: str):
    """The committed clip under another suffix in ``folder`` (its key in --out is the same)."""
    data, sr = soundfile.read(SPEECH_DIR / "quick_brown_fox_16k.wav")
    soundfile.write(folder / name, data, sr)
    return folder / name


def test_cards_lists_every_family(capsys) -> None:
    main(["cards"])
    printed = capsys.readouterr().out
    for family in {*FAMILIES, *UNAVAILABLE}:
        assert f" {family} " in printed, family


def test_encode_returns_hidden_states_of_the_layers_asked(tmp_path) -> None:
    out, clip = tmp_path / "hidden.safetensors", SPEECH_DIR / "quick_brown_fox_16k.wav"
    main(["encode", str(clip), "--tag", TINY_QWEN_OMNI, "--weights", "random", "--dtype", "fp32",
          "--returns", "hidden_states", "--layers", "0", "-1", "--out", str(out)])  # fmt: skip
    features = load_file(out)["quick_brown_fox_16k"]
    frames = -(-soundfile.info(clip).frames // 160)
    assert features.shape == (2, (frames - 1) // 2 + 1, 32)  # [layers, conv2's rows, d_model]


@pytest.mark.parametrize("command", ["encode", "extract"])
def test_an_encoder_that_cannot_be_built_is_a_message_and_exit_2(command: str, tmp_path, capsys) -> None:
    clip = str(SPEECH_DIR / "quick_brown_fox_16k.wav")
    args = [clip, "--out", str(tmp_path / "out")] if command == "extract" else [clip]
    with pytest.raises(SystemExit) as exited:
        main([command, *args, "--tag", TINY_QWEN_OMNI, "--weights", "random", "--cuda-graphs"])
    assert exited.value.code == 2
    assert "cannot build the encoder: cuda_graphs=True needs a CUDA device" in capsys.readouterr().err
