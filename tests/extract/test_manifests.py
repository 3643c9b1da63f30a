"""Every manifest format reads into the same clips; malformed manifests fail naming the file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from contaudio.extract.manifests import Clip, ManifestError, detect_format, read_manifest


@pytest.fixture
def files(tmp_path):
    """Two recordings: a mono 3 s wav at 16 kHz and a stereo 2 s flac at 22.05 kHz."""
    soundfile.write(tmp_path / "r1.wav", np.zeros(48000, np.float32), 16000)
    soundfile.write(tmp_path / "r2.flac", np.zeros((44100, 2), np.float32), 22050)
    return tmp_path


def test_jsonl_start_end_duration_and_channel(tmp_path) -> None:
    lines = [
        {"id": "u1", "path": "r1.wav"},
        {"id": "u2", "path": "r1.wav", "start": 0.5, "end": 2.0, "text": "ignored"},
        {"id": "u3", "path": "r2.flac", "duration": 1.0, "channel": 1},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert read_manifest(manifest) == [
        Clip("u1", "r1.wav", where=f"{manifest}:1"),
        Clip("u2", "r1.wav", 0.5, 1.5, where=f"{manifest}:2"),
        Clip("u3", "r2.flac", 0.0, 1.0, (1,), where=f"{manifest}:3"),
    ]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"path": "x.wav"}', "missing id"),
        ('{"id": "a", "path": "x.wav", "start": "soon"}', "start must be a number"),
        ('{"id": "a", "path": "x.wav", "start": 2, "end": 1}', "no length"),
        ("[1, 2]", "expected an object"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line: str, fragment: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "ok", "path": "x.wav"}\n' + line + "\n")
    with pytest.raises(ManifestError, match=fragment) as err:
        read_manifest(manifest)
    assert f"{manifest}:2" in str(err.value)


def test_duplicate_ids_are_refused(tmp_path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "path": "x.wav"}\n{"id": "a", "path": "y.wav"}\n')
    with pytest.raises(ManifestError, match="unique id") as err:
        read_manifest(manifest)
    assert f"{manifest}:2" in str(err.value)


def test_kaldi_wav_scp_with_and_without_segments(files) -> None:
    data = files / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"rec1 {files / 'r1.wav'}\nrec2 sox {files / 'r2.flac'} -t wav - |\n")
    whole = read_manifest(data / "wav.scp")
    assert [(c.id, c.problem is None) for c in whole] == [("rec1", True), ("rec2", False)]
    assert "shell command" in whole[1].problem
    (data / "segments").write_text("s1 rec1 0.0 1.25\ns2 rec1 1.25 -1\ns3 rec9 0 1\n")
    segs = read_manifest(data)  # the data folder: wav.scp plus the segments beside it
    assert [(c.id, c.path, c.start_s, c.duration_s) for c in segs[:2]] == [
        ("s1", str(files / "r1.wav"), 0.0, 1.25),
        ("s2", str(files / "r1.wav"), 1.25, None),
    ]
    assert "rec9" in segs[2].problem
    (data / "segments").write_text("s1 rec1 0.0\n")
    with pytest.raises(ManifestError, match=r"segments:1: expected '<utt-id> <recording-id> <start> <end>'"):
        read_manifest(data / "wav.scp")


def test_lhotse_cuts_and_recordings(files) -> None:
    lhotse = pytest.importorskip("lhotse")
    recordings = lhotse.RecordingSet.from_recordings(
        [lhotse.Recording.from_file(files / "r1.wav"), lhotse.Recording.from_file(files / "r2.flac")]
    )
    recordings.to_file(files / "recordings.jsonl.gz")
    from_recordings = read_manifest(files / "recordings.jsonl.gz")
    assert [(c.id, c.path, c.duration_s, c.problem) for c in from_recordings] == [
        ("r1", str(files / "r1.wav"), None, None),
        ("r2", str(files / "r2.flac"), None, None),
    ]
    cuts = lhotse.CutSet.from_manifests(recordings=recordings).cut_into_windows(1.0).to_eager()
    cuts.to_file(files / "cuts.jsonl.gz")
    from_cuts = read_manifest(files / "cuts.jsonl.gz")
    assert [c.id for c in from_cuts] == [c.id for c in cuts] and len(cuts) == 5
    assert [(c.start_s, c.duration_s) for c in from_cuts[:3]] == [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]
    assert all(c.problem is None and c.channels is None for c in from_cuts)  # every channel of the file
    url = lhotse.Recording(id="web", sources=[lhotse.audio.AudioSource("url", [0], "https://example.org/a.wav")],
                           sampling_rate=16000, num_samples=16000, duration=1.0)  # fmt: skip
    lhotse.RecordingSet.from_recordings([url]).to_file(files / "web.jsonl.gz")
    (clip,) = read_manifest(files / "web.jsonl.gz")
    assert "'url' source" in clip.problem


def test_folder_and_glob(files) -> None:
    (files / "sub").mkdir()
    soundfile.write(files / "sub" / "r3.wav", np.zeros(1600, np.float32), 16000)
    (files / "notes.txt").write_text("not audio")
    assert [c.id for c in read_manifest(files)] == ["r1", "r2", "sub/r3"]
    assert [c.id for c in read_manifest(f"{files}/**/*.wav")] == ["r1", "sub/r3"]
    with pytest.raises(ManifestError, match="no audio files"):
        read_manifest(f"{files}/*.mp3")


def test_detect_format_says_what_it_accepts(tmp_path) -> None:
    assert detect_format(tmp_path) == "glob"
    (tmp_path / "wav.scp").write_text("")
    assert detect_format(tmp_path) == "kaldi"
    with pytest.raises(ManifestError, match="cannot tell the manifest format"):
        detect_format("clips.csv")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")
