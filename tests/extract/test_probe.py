"""Header lengths equal find_length on the decoded audio; load gives preprocess exactly those samples."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from helpers.corpus import BAD_IDS, decoded

from contaudio.extract.manifests import Clip
from contaudio.extract.probe import ClipError, load, probe, segment_bounds


def test_header_lengths_equal_find_length_of_the_decoded_audio(corpus, lengths_io) -> None:
    for clip in corpus.clips():
        if clip.id in BAD_IDS:
            continue
        wav, rate = decoded(clip)
        length = probe(clip, lengths_io)
        assert length.rows == lengths_io.find_length((wav, rate)), clip.id
        assert length.source_samples == wav.shape[1] and length.duration_s == wav.shape[1] / rate
        assert length.mel_frames == lengths_io.preprocess((wav, rate))[1][1].shape[0], clip.id
        assert probe(clip, lengths_io, decode=True) == length  # counting by decoding agrees with the header


def test_load_returns_the_counted_samples(corpus, lengths_io) -> None:
    for clip in corpus.clips():
        if clip.id in BAD_IDS:
            continue
        wav, rate = load(clip, probe(clip, lengths_io))
        expected, expected_rate = decoded(clip)
        assert rate == expected_rate
        np.testing.assert_array_equal(wav, expected)


def test_channel_selection(tmp_path, lengths_io) -> None:
    stereo = np.stack([np.full(1600, 0.25, np.float32), np.full(1600, -0.5, np.float32)], axis=1)
    soundfile.write(tmp_path / "s.wav", stereo, 16000, subtype="FLOAT")
    clip = Clip("s", str(tmp_path / "s.wav"), channels=(1,))
    wav, _ = load(clip, length := probe(clip, lengths_io))
    assert length.channels == 1 and wav.shape == (1, 1600) and float(wav.max()) == -0.5
    with pytest.raises(ClipError, match=r"channel\(s\) \[2\] asked for, but .* has 2 channel"):
        probe(Clip("s", str(tmp_path / "s.wav"), channels=(2,)), lengths_io)


@pytest.mark.parametrize(
    ("clip_id", "fragment"),
    [("missing", "file not found"), ("garbage", "soundfile cannot read"), ("past_end", "past the end of the 2.3 s")],
)
def test_unreadable_clips_say_why(corpus, lengths_io, clip_id: str, fragment: str) -> None:
    clip = next(c for c in corpus.clips() if c.id == clip_id)
    with pytest.raises(ClipError, match=fragment):
        probe(clip, lengths_io)


def test_policy_refusals_and_empty_files(tmp_path, lengths_io) -> None:
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(ClipError, match="holds no samples"):
        probe(Clip("e", str(tmp_path / "empty.wav")), lengths_io)
    soundfile.write(tmp_path / "low.wav", np.zeros(100, np.float32), 800)  # a rate preprocess refuses
    with pytest.raises(ClipError, match="sample rate must be in"):
        probe(Clip("l", str(tmp_path / "low.wav")), lengths_io)
    with pytest.raises(ClipError, match="only a test") as err:  # a problem the manifest named: never read
        probe(Clip("x", "a.wav", problem="recording 'a' is only a test"), lengths_io)
    assert err.value.stage == "manifest"


def test_segment_bounds() -> None:
    assert segment_bounds(0.25, 0.5, 16000, 16000) == (4000, 8000)
    assert segment_bounds(0.5, 0.52, 16000, 16000) == (8000, 8000)  # 20 ms past the end: cut at the end
    with pytest.raises(ClipError, match=r"segment ends at 1\.5 s but the file is only 1 s long"):
        segment_bounds(0.5, 1.0, 16000, 16000)
    # a segment's length does not depend on where it starts
    assert {segment_bounds(start / 1000, 0.3, 22050, 10**6)[1] for start in range(0, 1000, 7)} == {6615}
