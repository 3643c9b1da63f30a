"""Whisper encoder: the length rule, the long-clip policy, loading other exports, and a clip cut off loud.

Checked against HF's code on the same weights: ``_get_feat_extract_output_lengths`` for the rule;
HF's extractor (clip zero-padded to whole 30 s windows, cut as Voxtral's processor cuts them) and
``WhisperEncoder`` for clips longer than a window; and HF's 30 s pipeline on a clip that ends
loud, which differs from ours only through the <= 2 frames whose STFT window straddles the
clip's end. What every family shares (loading a whole checkpoint, oracle, lengths, padded
batches, FLOPs vs torch) is in ``test_families.py``.

Modes: Whisper has no LM, so ``returns="lm"`` is refused and ``returns=None`` means ``"tower"``;
``returns="hidden_states"`` is checked against HF's ``output_hidden_states=True`` on the whole (untrimmed)
encoder, whose last entry is tied to ``last_hidden_state`` (after ``layer_norm``) and whose others are raw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import noise_padded_batch
from helpers.checkpoints import TINY_WHISPER, assert_holds_tower, card_extractor, save_tiny_whisper
from helpers.faults import moved_hidden_states
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from contaudio import ContinuousAudioIO
from contaudio.encoders import whisper as whisper_module
from contaudio.encoders.whisper import whisper_rows
from contaudio.encoders.windows import WINDOW_FRAMES, ClipTooLongError
from contaudio.lengths import mel_frames

ATOL = 1e-5  # fp32, same weights; our mel vs the extractor's differ by ~1e-6 (measured: 1.2e-6 on the rows)
HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP  # 480000 = 30 s
TAIL_SILENCE_SAMPLES = 800  # 50 ms: the frames straddling the clip's end are then silence in HF's features too
LONG_SAMPLES = [WINDOW_SAMPLES + 1, 45 * 16000, 2 * WINDOW_SAMPLES, 2 * WINDOW_SAMPLES + 160]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_whisper_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_whisper_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32")


@pytest.fixture(scope="module")
def io_windows(tiny_whisper_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_whisper_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows")  # fmt: skip


@pytest.fixture(scope="module")
def hf_encoder(tiny_whisper_checkpoint) -> WhisperEncoder:
    """The encoder of the whole model transformers saved (same weights as ``io``)."""
    return tiny_whisper_checkpoint[1].get_encoder()


def hf_extract(wav: np.ndarray, **padding) -> tuple[torch.Tensor, int]:
    """HF's extractor: ``(input_features [1, n_mels, F], valid frames)``."""
    out = card_extractor(TINY_WHISPER)(wav, sampling_rate=16000, return_attention_mask=True, return_tensors="pt",
                                        **padding)  # fmt: skip
    return out["input_features"], int(out["attention_mask"].sum())


def hf_window_rows(encoder: WhisperEncoder, features: torch.Tensor, frames: int) -> torch.Tensor:
    """HF's encoder on each 3000-frame window of ``features [1, n_mels, k * 3000]``, each cut to HF's valid rows."""
    windows = features[0].reshape(features.shape[1], -1, WINDOW_FRAMES).transpose(0, 1)  # as Voxtral's processor
    with torch.inference_mode():
        hidden = encoder(windows).last_hidden_state  # [k, 1500, d]
    valid = encoder._get_feat_extract_output_lengths(torch.tensor([min(WINDOW_FRAMES, frames - s) for s in
                                                                   range(0, frames, WINDOW_FRAMES)]))  # fmt: skip
    return torch.cat([h[:n] for h, n in zip(hidden, valid.tolist(), strict=True)])


def ends_in_silence(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A noise clip of ``num_samples`` whose last 50 ms are silence, as speech ends."""
    tail = np.zeros(TAIL_SILENCE_SAMPLES, np.float32)
    return np.concatenate([noise(rng, num_samples - TAIL_SILENCE_SAMPLES, 0.05), tail])


def encode(io: ContinuousAudioIO, wav: np.ndarray) -> tuple[int, torch.Tensor]:
    """preprocess + encode_batch on one clip: (preprocess's T, the rows)."""
    _, (rows, mel), _ = io.preprocess((wav, 16000))
    with torch.inference_mode():
        (feats,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
    return rows, feats


def test_rule_equals_hf_valid_length(hf_encoder) -> None:
    """Within the window HF's own helper; past it, HF's helper summed over consecutive windows."""
    ms = torch.arange(0, WINDOW_FRAMES + 1)
    assert torch.equal(whisper_rows(ms), hf_encoder._get_feat_extract_output_lengths(ms))
    assert whisper_rows(WINDOW_FRAMES) == 1500 == hf_encoder.config.max_source_positions
    for m in (1, 2999, 3000, 3001, 6000, 9001):
        pieces = torch.tensor([min(WINDOW_FRAMES, m - s) for s in range(0, m, WINDOW_FRAMES)])
        hf_rows = int(hf_encoder._get_feat_extract_output_lengths(pieces).sum())
        assert whisper_rows(m) == int(whisper_rows(torch.tensor(m))) == hf_rows, m


@pytest.mark.parametrize("num_samples", [WINDOW_SAMPLES + 1, 2 * WINDOW_SAMPLES + 160])
def test_long_clip_raises_by_default_everywhere(io, rng, num_samples: int) -> None:
    wav = noise(rng, num_samples, 0.01)
    frames = mel_frames(num_samples, HOP)
    for call in (lambda: io.preprocess((wav, 16000)), lambda: io.find_length(num_samples),
                 lambda: io.find_length((wav, 16000)), lambda: io.find_length(torch.tensor([16000, num_samples])),
                 lambda: io.encode_batch(torch.zeros(1, frames, 80), torch.tensor([frames]))):  # fmt: skip
        with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
            call()
    assert io.find_length(WINDOW_SAMPLES) == 1500  # the window itself is fine


@pytest.mark.parametrize("num_samples", LONG_SAMPLES)
def test_long_clip_windows_equal_hfs_encoder_on_each_30s_window(io_windows, hf_encoder, rng, num_samples: int) -> None:
    """A clip ending in silence (as speech does) vs HF's extractor padded to whole windows and HF's encoder."""
    wav = ends_in_silence(rng, num_samples)
    rows, ours = encode(io_windows, wav)
    features, frames = hf_extract(wav, padding="longest", pad_to_multiple_of=WINDOW_SAMPLES, truncation=False)
    ref = hf_window_rows(hf_encoder, features, frames)
    assert io_windows.find_length(num_samples) == rows == ours.shape[0] == ref.shape[0]
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_a_clip_cut_off_loud_differs_from_hfs_pipeline_only_through_the_straddling_frames(io, hf_encoder, rng) -> None:
    """HF's 30 s pipeline computes the <= 2 frames whose STFT window straddles the clip's end from the clip;
    ours pads with silence there. With those frames set to HF's own padding value, HF gives our rows."""
    wav = noise(rng, 5 * 16000 + 77)  # loud to its last sample
    features, frames = hf_extract(wav, padding="max_length")  # Whisper's processor: one 30 s window
    silence = features[0, :, -1:]  # the last frame sees only the zero padding
    straddling = (features[0, :, frames:] != silence).any(0).nonzero().flatten().tolist()
    assert straddling == list(range(len(straddling))) and 1 <= len(straddling) <= 2  # right after the clip
    patched = features.clone()
    patched[0, :, frames:] = silence
    rows, ours = encode(io, wav)
    pipeline = hf_window_rows(hf_encoder, features, frames)
    assert ours.shape == pipeline.shape == (rows, io.feature_dim())
    assert (ours - pipeline).abs().amax(1).min() > ATOL  # full attention: every row moves
    torch.testing.assert_close(ours, hf_window_rows(hf_encoder, patched, frames), atol=ATOL, rtol=0)


def test_loads_from_a_sharded_checkpoint_and_an_encoder_only_export(tiny_whisper_checkpoint, tmp_path) -> None:
    """The shared suite loads the single-file full checkpoint; here the sharded one and the bare encoder's keys."""
    _, model = tiny_whisper_checkpoint
    sharded = save_tiny_whisper(tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    model.get_encoder().save_pretrained(tmp_path / "encoder")  # config model_type "whisper", bare keys
    card_extractor(TINY_WHISPER).save_pretrained(tmp_path / "encoder")
    exports = {"sharded": sharded.get_encoder(), "encoder": model.get_encoder()}
    for name, encoder in exports.items():
        directory = tmp_path / name
        io = ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32")
        assert io.family.name == "whisper"
        assert_holds_tower(io, encoder.state_dict(), name)


# ------------------------------------------------------------------------------------------------ returns= modes
HIDDEN_LAYERS = [[0, 1, 2], [-1], [1], [2, 0]]  # the tiny encoder has 2 layers: 3 hidden states
HIDDEN_SAMPLES = [1601, 5 * 16000, WINDOW_SAMPLES + 16000]  # 0.1 s, 5 s and two windows (long_clip="windows")


def test_lm_is_refused_and_the_default_is_the_tower() -> None:
    with pytest.raises(ValueError, match=r"no language model.*returns='tower'"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_WHISPER, weights="random", returns="lm", skip_init_encoder=True)
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_WHISPER, weights="random", skip_init_encoder=True)
    assert io.returns == "tower" and io.family.mode == "tower" and io.find_length(16000) == 50


def hidden_io(directory, layers: list[int]) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             returns="hidden_states", layers=layers, long_clip="windows")  # fmt: skip


def hf_hidden_states(encoder: WhisperEncoder, wav: np.ndarray, layers: tuple[int, ...]) -> torch.Tensor:
    """HF's whole encoder with ``output_hidden_states=True`` on the clip's 30 s windows: ``[L, rows, d]``, each window
    cut to HF's valid rows."""
    features, frames = hf_extract(wav, padding="longest", pad_to_multiple_of=WINDOW_SAMPLES, truncation=False)
    windows = features[0].reshape(features.shape[1], -1, WINDOW_FRAMES).transpose(0, 1)
    with torch.inference_mode():
        states = encoder(windows, output_hidden_states=True).hidden_states
    assert len(states) == encoder.config.encoder_layers + 1
    valid = encoder._get_feat_extract_output_lengths(torch.tensor([min(WINDOW_FRAMES, frames - s) for s in
                                                                   range(0, frames, WINDOW_FRAMES)]))  # fmt: skip
    return torch.stack([torch.cat([states[i][k, :n] for k, n in enumerate(valid.tolist())]) for i in layers])


def check_hidden_states(io: ContinuousAudioIO, encoder: WhisperEncoder, wavs: list[np.ndarray], rng) -> None:
    """A noise-padded batch of ``wavs``: find_length == preprocess's T == encode_batch's rows == HF's (whole encoder
    and the family's oracle on the trimmed one), values within ATOL of both."""
    processed = [io.preprocess((wav, 16000))[1] for wav in wavs]
    mel, lengths = noise_padded_batch([m for _, m in processed], 11, rng)
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
    extractor = io.features.hf_extractor()
    for wav, (rows, _), ours in zip(wavs, processed, outs, strict=True):
        ref = hf_hidden_states(encoder, wav, io.layers)
        with torch.inference_mode():
            oracle = io.family.oracle(io.encoder, extractor, wav)
        assert oracle.error is None, oracle.error
        assert io.find_length(len(wav)) == rows == ours.shape[1] == ref.shape[1] == oracle.count, len(wav)
        assert ours.shape == (len(io.layers), rows, io.feature_dim())
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(oracle.rows, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layers", HIDDEN_LAYERS, ids=str)
def test_hidden_states_equal_hfs_output_hidden_states(tiny_whisper_checkpoint, hf_encoder, rng, layers) -> None:
    directory, _ = tiny_whisper_checkpoint
    io = hidden_io(directory, layers)
    assert len(io.encoder.layers) == max(io.layers)  # only the layers up to the deepest asked for
    assert isinstance(io.encoder.layer_norm, torch.nn.Identity) == (max(io.layers) < 2)
    wavs = [ends_in_silence(rng, n) for n in HIDDEN_SAMPLES]
    check_hidden_states(io, hf_encoder, wavs, rng)


def test_hidden_states_check_fails_when_either_side_breaks(tiny_whisper_checkpoint, hf_encoder, rng, monkeypatch):
    """The comparison above fails with a fault on our side (positions dropped from the first layer's input; the
    final norm kept on a trimmed encoder, so HF's last entry of it would be normed) and on HF's (its encoder's
    hidden states moved)."""
    directory, _ = tiny_whisper_checkpoint
    wavs = [ends_in_silence(rng, 16000)]
    check_hidden_states(hidden_io(directory, [0, 1]), hf_encoder, wavs, rng)  # the baseline passes
    with monkeypatch.context() as patch:
        patch.setattr(whisper_module, "embed_windows", embed_without_positions)
        with pytest.raises(AssertionError):
            check_hidden_states(hidden_io(directory, [0, 1]), hf_encoder, wavs, rng)
    with monkeypatch.context() as patch:
        patch.setattr(whisper_module.WhisperHiddenStates, "final_norm", None)  # the final norm kept when trimmed
        with pytest.raises(AssertionError):
            check_hidden_states(hidden_io(directory, [1]), hf_encoder, wavs, rng)
    forward = WhisperEncoder.forward

    moved = moved_hidden_states(forward)

    with monkeypatch.context() as patch:
        patch.setattr(WhisperEncoder, "forward", moved)
        with pytest.raises(AssertionError):
            check_hidden_states(hidden_io(directory, [0, 1]), hf_encoder, wavs, rng)


def embed_without_positions(encoder, windows: torch.Tensor) -> torch.Tensor:
    """The injected bug: the first layer's input without the learned positions."""
    conv = torch.nn.functional.gelu
    return conv(encoder.conv2(conv(encoder.conv1(windows)))).transpose(1, 2)
