"""``returns=``: one meaning of a row for every family, the modes' plumbing, and hidden states against HF's own
``output_hidden_states`` (Qwen2.5-Omni here; each family's modes are tested in ``tests/encoders/test_<family>.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import clips_and_batch

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders import qwen2_5_omni as qwen_module
from contaudio.encoders.registry import RETURNS, HiddenStatesView, resolve_layers

QWEN = "contaudio/tiny-qwen2.5-omni"
CLIP_SAMPLES = (16000, 70001, 33333, 480, 161)  # whole seconds, past a 200-frame chunk edge, 3 and 1 hidden rows
ATOL = 1e-4  # float32: same weights, different kernels


def build(returns: str | None = None, layers: list[int] | None = None, tag: str = QWEN) -> ContinuousAudioIO:
    return ContinuousAudioIO(
        encoder_hf_model_tag=tag, weights="random", dtype="float32", returns=returns, layers=layers
    )


# ------------------------------------------------------------------------------------------- choosing a mode
def test_returns_none_is_lm_and_tower_for_whisper() -> None:
    assert build().returns == "lm"
    assert build(tag="contaudio/tiny-whisper").returns == "tower"
    with pytest.raises(ValueError, match=r"whisper has no language model, so no returns='lm'.*returns='tower'"):
        build("lm", tag="contaudio/tiny-whisper")


@pytest.mark.parametrize(
    ("returns", "layers", "message"),
    [
        ("hidden", None, r"returns must be one of \('lm', 'tower', 'hidden_states'\), got 'hidden'"),
        ("tower", [1], r"layers=\[1\] only applies to returns='hidden_states'"),
        ("hidden_states", None, r"needs layers=\[...\]"),
        ("hidden_states", [3], r"this encoder has 2 layers, so hidden states 0..2 \(or -3..-1\); 3 is out of range"),
        ("hidden_states", [2, -1], r"names a hidden state twice"),
    ],
)
def test_bad_modes_say_what_to_pass(returns: str, layers: list[int] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(returns, layers)


def test_layers_resolve_in_the_order_given() -> None:
    assert resolve_layers([-1, 0, 1], 2) == (2, 0, 1)
    with pytest.raises(TypeError, match="layers must be integers"):
        resolve_layers([1.0], 2)  # type: ignore[list-item]
    assert RETURNS == ("lm", "tower", "hidden_states")


# ------------------------------------------------------------------------- Qwen2.5-Omni: lm == tower == today
def test_qwen_omni_lm_is_the_tower_and_unchanged() -> None:
    """ESPnet's contract: Qwen2.5-Omni's default output is what it was ([T, output_dim]); same module, same keys."""
    default, lm, tower = build(), build("lm"), build("tower")
    assert default.feature_dim() == lm.feature_dim() == tower.feature_dim() == 48
    assert default.state_dict().keys() == tower.state_dict().keys()
    _, pre, mel, lengths = clips_and_batch(default, CLIP_SAMPLES)
    with torch.inference_mode():
        outs = [io.encode_batch(mel, lengths) for io in (default, lm, tower)]
    for a, b, c, p in zip(*outs, pre, strict=True):
        assert a.shape == (p[1][0], 48)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- hidden states
@pytest.mark.parametrize("layers", [[0, -1], [1], [2, 0, 1], [0]])
def test_hidden_states_equal_hf_output_hidden_states(layers: list[int]) -> None:
    """Per clip [len(layers), T, d_model], T = find_length = preprocess's T, each clip of a noise-padded batch equal
    to HF's output_hidden_states for the clip alone (HF's extractor and thinker path on the same weights)."""
    io = build("hidden_states", layers)
    assert isinstance(io.family, HiddenStatesView)
    assert len(io.encoder.layers) == max(*io.layers, 1)  # the layers up to the deepest one (HF records 0 in one)
    assert io.feature_dim() == 32  # the tower's width, not the LM's
    wavs, pre, mel, lengths = clips_and_batch(io, CLIP_SAMPLES)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, p, out in zip(wavs, pre, outs, strict=True):
            assert out.shape == (len(layers), p[1][0], 32)
            assert io.find_length(len(wav)) == io.find_length(None, before_length=p[1][1].shape[0]) == p[1][0]
            oracle = io.family.oracle(io.encoder, extractor, wav)
            assert oracle.error is None and oracle.count == p[1][0]
            torch.testing.assert_close(out, oracle.rows, rtol=0, atol=ATOL)


def test_hidden_states_of_the_trimmed_tower_are_the_whole_towers() -> None:
    """The oracle runs HF on the trimmed tower: its hidden states equal HF's on the whole tower (same seed)."""
    whole, trimmed = build("tower"), build("hidden_states", [1])
    wav = noise(np.random.default_rng(1), 40000)
    extractor = whole.features.hf_extractor()
    full_view = get_family("qwen2_5_omni").view("hidden_states", [1], whole.source.encoder_config)
    with torch.inference_mode():
        reference = full_view.oracle(whole.encoder, extractor, wav)
        ours = trimmed.family.oracle(trimmed.encoder, extractor, wav)
    torch.testing.assert_close(ours.rows, reference.rows, rtol=0, atol=0)


def test_hidden_states_mismatch_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison fails when our side skips a layer, and when HF's side answers another hidden state."""
    io = build("hidden_states", [2])
    wavs, _, mel, lengths = clips_and_batch(io, CLIP_SAMPLES)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        good = io.encode_batch(mel, lengths)[0]
        oracle = io.family.oracle(io.encoder, extractor, wavs[0])
        torch.testing.assert_close(good, oracle.rows, rtol=0, atol=ATOL)
        with monkeypatch.context() as patch:  # our side: the last layer never runs
            run = qwen_module.windowed_hidden_states
            patch.setattr(qwen_module, "windowed_hidden_states", lambda layers, *a, **k: run(layers[:1], *a, **k))
            assert (io.encode_batch(mel, lengths)[0] - oracle.rows).abs().max() > ATOL
        with monkeypatch.context() as patch:  # HF's side: the oracle picks the wrong entry of HF's tuple
            patch.setattr(qwen_module, "thinker_hidden_states", lambda f, e, x, n, layers: _first_layer(f, e, x, n))
            wrong = io.family.oracle(io.encoder, extractor, wavs[0])
            assert (good - wrong.rows).abs().max() > ATOL


def _first_layer(get_audio_features, encoder, features, frames) -> torch.Tensor:
    from contaudio.encoders.oracle import thinker_hidden_states

    return thinker_hidden_states(get_audio_features, encoder, features, frames, (1,))


def test_hidden_states_dummy_forward_and_worker_copy() -> None:
    io = build("hidden_states", [0, 2])
    out = io.dummy_forward(torch.zeros(1, dtype=torch.float16))
    assert out.ndim == 3 and out.shape[0] == 2 and out.shape[2] == 32 and out.dtype == torch.float16
    worker = io.copy_for_worker()
    assert worker.find_length(16000) == io.find_length(16000) == 50
    empty = io.encode_batch(torch.zeros(1, 4, io.n_mels), torch.tensor([0]))[0]
    assert empty.shape == (2, 0, 32)
