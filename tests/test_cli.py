"""The end-to-end command on the committed speech clips."""

from __future__ import annotations

from conftest import SPEECH_DIR, TINY_QWEN_OMNI
from safetensors.torch import load_file

from contaudio.cli import main
from contaudio.lengths import qwen2_5_omni_rows


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
