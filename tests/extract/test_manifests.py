"""Every manifest format reads into the same clips; malformed manifests fail naming the file and line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile
import torch

from contaudio.extract.manifests import Clip, ManifestError, PipeError, audio_source, detect_format, read_manifest


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
        ('{"id": null, "path": "x.wav"}', "id must be a string, got NoneType None"),  # it became the id 'None'
        ('{"id": 5, "path": "x.wav"}', "id must be a string, got int 5: quote it"),
        ('{"id": "\\ud800", "path": "x.wav"}', r"cannot be written as UTF-8 text: '\\ud800'"),
        ('{"id": "a\\u0000b", "path": "x.wav"}', r"cannot be written as UTF-8 text: 'a\\x00b'"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line: str, fragment: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "ok", "path": "x.wav"}\n' + line + "\n")
    with pytest.raises(ManifestError, match=fragment) as err:
        read_manifest(manifest)
    assert f"{manifest}:2" in str(err.value)


def test_an_empty_manifest_is_refused_as_an_empty_folder_is(tmp_path) -> None:
    (manifest := tmp_path / "m.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="lists no clips"):
        read_manifest(manifest)


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
    assert [c.id for c in read_manifest(f"{files}/*")] == ["r1", "r2"]  # a glob keeps audio only, as a folder does
    with pytest.raises(ManifestError, match="no audio files"):
        read_manifest(f"{files}/*.txt")


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(files) -> None:
    """Its id (the name, surrogate-escaped by Python) could be written into no JSON or safetensors header."""
    name = os.fsdecode(b"x\xff.wav")
    soundfile.write(files / "r1.wav", np.zeros(1600, np.float32), 16000)
    (files / name).write_bytes((files / "r1.wav").read_bytes())
    with pytest.raises(ManifestError, match=r"1 clip id\(s\) cannot be written as UTF-8 text: 'x\\udcff'"):
        read_manifest(files)


def test_one_file_as_a_glob(files) -> None:
    """A single audio file named is that one clip (a glob); a text file given as a glob is refused, saying what a
    list of paths is (it once crashed inside pathlib)."""
    assert [(c.id, c.path) for c in read_manifest(files / "r1.wav")] == [("r1", str(files / "r1.wav"))]
    (files / "list.txt").write_text(f"{files / 'r1.wav'}\n")
    with pytest.raises(ManifestError, match=r"list.txt is a file, neither audio .* nor a pattern.*--format kaldi"):
        read_manifest(files / "list.txt", "glob")


def test_detect_format_says_what_it_accepts(tmp_path) -> None:
    assert detect_format(tmp_path) == "glob"
    (tmp_path / "wav.scp").write_text("")
    assert detect_format(tmp_path) == "kaldi"
    (csv := tmp_path / "clips.csv").write_text("a,b\n")
    with pytest.raises(ManifestError, match="cannot tell the manifest format"):
        detect_format(csv)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="nope does not exist: pass a manifest"):  # not "cannot tell the format"
        read_manifest(tmp_path / "nope")


def test_pipes_refused_without_the_flag_and_run_with_it(files) -> None:
    """``cmd args |`` entries fail per clip naming --allow-pipes; with it the command runs and soundfile decodes
    its stdout (here ``cat``: the same samples as the file); a failing command is that clip's error."""
    scp = files / "wav.scp"
    lines = [f"p1 cat {files / 'r1.wav'} |", f"p2 cat {files / 'nowhere.wav'} |", "p3 true |"]
    lines.append(f"f1 {files / 'r2.flac'}")
    scp.write_text("\n".join(lines) + "\n")
    refused = read_manifest(scp)
    assert [c.pipe for c in refused] == [False] * 4 and all("--allow-pipes" in c.problem for c in refused[:3])
    assert refused[3].problem is None
    clips = read_manifest(scp, allow_pipes=True)
    assert [(c.id, c.pipe, c.problem) for c in clips] == [("p1", True, None), ("p2", True, None),
                                                          ("p3", True, None), ("f1", False, None)]  # fmt: skip
    piped, rate = soundfile.read(audio_source(clips[0]), dtype="float32")
    assert rate == 16000 and np.array_equal(piped, soundfile.read(files / "r1.wav", dtype="float32")[0])
    with pytest.raises(PipeError, match=r"exited with status 1: .*nowhere\.wav"):
        audio_source(clips[1])
    with pytest.raises(PipeError, match="wrote no audio"):
        audio_source(clips[2])
    assert isinstance(PipeError("x"), OSError)  # a clip error: recorded per clip, the job goes on
    assert audio_source(clips[3]) == str(files / "r2.flac")
    (files / "segments").write_text("s1 p1 0.5 1.5\n")
    (seg,) = read_manifest(files, allow_pipes=True)
    assert (seg.pipe, seg.start_s, seg.duration_s, seg.path) == (True, 0.5, 1.0, clips[0].path)


def test_lhotse_command_source_needs_the_flag(files) -> None:
    lhotse = pytest.importorskip("lhotse")
    source = lhotse.audio.AudioSource("command", [0], f"cat {files / 'r1.wav'}")
    rec = lhotse.Recording(id="cmd", sources=[source], sampling_rate=16000, num_samples=48000, duration=3.0)
    lhotse.RecordingSet.from_recordings([rec]).to_file(files / "cmd.jsonl.gz")
    (refused,) = read_manifest(files / "cmd.jsonl.gz")
    assert "--allow-pipes" in refused.problem
    (clip,) = read_manifest(files / "cmd.jsonl.gz", allow_pipes=True)
    assert clip.pipe and clip.problem is None and soundfile.info(audio_source(clip)).frames == 48000


def test_pipe_clips_extract_like_their_files(files, tmp_path) -> None:
    """End to end: features of ``cat file |`` entries equal those of the files themselves."""
    from helpers.corpus import TINY_KWARGS

    from contaudio import FeatureStore
    from contaudio.extract import ExtractOptions, RankInfo, run_extract
    from contaudio.extract import probe as probe_module

    if "audio_source" not in vars(probe_module):
        pytest.skip("contaudio/extract/probe.py does not read clips through manifests.audio_source yet")
    (files / "wav.scp").write_text(f"r1 {files / 'r1.wav'}\n")
    (tmp_path / "wav.scp").write_text(f"r1 cat {files / 'r1.wav'} |\n")
    stores = []
    for scp, out in ((files / "wav.scp", tmp_path / "files"), (tmp_path / "wav.scp", tmp_path / "pipes")):
        options = ExtractOptions(out=out, workers=0, progress=False)
        summary = run_extract(read_manifest(scp, allow_pipes=True), TINY_KWARGS, options, RankInfo())
        assert summary["clips_ok"] == 1, summary
        stores.append(FeatureStore(out))
    assert torch.equal(stores[0]["r1"], stores[1]["r1"])
