"""ESPnet's SpeechLM is the contract: what its job, length-stats step, data loader and model do with the IO.

Written from how ESPnet's SpeechLM code uses a multimodal IO object (its job template, its
``prepare_length_stats`` step, its collate function and its ``ParallelHFModel``):

- the job maps ``continuous_audio`` to the class, asserts ``issubclass(cls, AbsIO)``, calls ``cls(**yaml_kwargs)``;
- vocabulary, preprocessor and embedding code read ``io.is_discrete`` and ``io.modality``;
- the length-stats step builds the job from the YAML as is and calls ``find_length((wav[C, N], sr))`` in a Pool;
- ``copy_for_worker()`` copies are pickled into data-loader workers;
- the collate right-pads each ``(T, mel)`` with 0.0 into ``[N, M_max, n_mels]``, lengths in mel frames (long),
  casts floats to the training dtype (bf16) and calls ``encode_batch(feats, lengths)`` positionally, with grad
  in training and under ``no_grad`` in eval; each output is written into T positions without slicing;
- a batch without audio calls ``dummy_forward(ref_tensor=input_embeds)``, feeds it through
  ``nn.Linear(feature_dim, hidden)`` and adds ``0.0 * out.sum()``;
- its checkpoints hold the tower under ``<io name>.model.audio_tower.*``.

These tests hold contaudio's own class to that contract in contaudio's environment, without ESPnet.
The class ESPnet's job actually gets (``contaudio.integrations.espnet``) is tested against the real
``espnet[speechlm]==202611`` package and ESPnet's own ``ContinuousAudioIO`` in ``tests/integration/``
(``make test-espnet``), which needs Python >= 3.12 and ESPnet's pinned transformers/torch.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import TINY_QWEN_OMNI
from helpers.espnet_hub import hide_espnet
from torch import nn
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from contaudio import ContinuousAudioIO, audio
from contaudio.lengths import ceil_div, resampled_length

QWEN_7B = "Qwen/Qwen2.5-Omni-7B"
HOP = 160
HIDDEN = 24  # the LM's hidden size in these tests
IO_NAME = "continuous_audio"
STAND_IN_ABS_IO = "espnet2.speechlm.model.speechlm.multimodal_io.abs_io"


@pytest.fixture(scope="module")
def stats_io() -> ContinuousAudioIO:
    """What the length-stats step builds: the real 7B tag, no weights (its shipped card answers offline)."""
    return ContinuousAudioIO(encoder_hf_model_tag=QWEN_7B, skip_init_encoder=True)


# ------------------------------------------------------------------------------------------ find_length
def test_before_length_is_a_mel_frame_count(stats_io) -> None:
    assert stats_io.find_length(None, before_length=100) == 25
    assert isinstance(stats_io.find_length(None, before_length=100), int)
    frames = torch.tensor([100, 200, 50])
    out = stats_io.find_length(None, before_length=frames)
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.tensor([25, 50, 12]))
    grid = torch.tensor([[100, 3], [2, 4001]])
    assert torch.equal(stats_io.find_length(None, before_length=grid), torch.tensor([[25, 1], [0, 1000]]))


def test_find_length_of_a_clip_resamples_like_preprocess(stats_io) -> None:
    assert stats_io.find_length((np.zeros((1, 48000), np.float32), 48000)) == 25


@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000, 8000])
def test_find_length_of_a_clip_equals_its_mel_frames(stats_io, rng, sr: int) -> None:
    for num_samples in rng.integers(1, 20 * sr, size=10).tolist():
        wav = np.zeros((1, num_samples), np.float32)
        frames = ceil_div(resampled_length(num_samples, sr, 16000), HOP)
        assert stats_io.find_length((wav, sr)) == stats_io.find_length(None, before_length=frames)


def test_before_length_refuses_what_is_not_a_count(stats_io) -> None:
    for bad, error in ((1.5, TypeError), (-1, ValueError), (torch.tensor([1.0]), TypeError), (True, TypeError),
                       (torch.tensor([-3]), ValueError)):  # fmt: skip
        with pytest.raises(error, match="before_length"):
            stats_io.find_length(None, before_length=bad)
    with pytest.raises(TypeError, match="before_length"):
        stats_io.find_length(None)


# --------------------------------------------------------------------------------- attributes, workers
def test_modality_and_discreteness_also_on_worker_copies(stats_io, tiny_io) -> None:
    for io in (stats_io, tiny_io, tiny_io.copy_for_worker(), pickle.loads(pickle.dumps(tiny_io.copy_for_worker()))):
        assert io.modality == "audio" and io.is_discrete is False
        assert io.num_stream() is None and io.get_vocabulary() is None
        assert io.get_stream_interval() is None and io.get_stream_weight() is None


def test_skip_init_encoder_builds_no_weights(stats_io, rng) -> None:
    assert stats_io.encoder is None and not list(stats_io.parameters())
    assert stats_io.feature_dim() == 3584
    seq, (rows, mel), mask = stats_io.preprocess((noise(rng, 16000)[None], 16000))
    assert rows == 25 == seq.shape[0] == mask.shape[0] and mel.shape == (100, 128)
    with pytest.raises(RuntimeError, match="skip_init_encoder"):
        stats_io.encode_batch(torch.zeros(1, 100, 128), torch.tensor([100]))


def test_the_job_builds_it_from_yaml_kwargs() -> None:
    yaml_kwargs = {"encoder_hf_model_tag": TINY_QWEN_OMNI, "dtype": "float32", "device": "cpu", "weights": "random"}
    io = ContinuousAudioIO(**yaml_kwargs)
    assert io.encoder is not None and io.modality == "audio"
    stats = ContinuousAudioIO(**yaml_kwargs, skip_init_encoder=True)
    assert stats.find_length(None, before_length=100) == io.find_length(None, before_length=100) == 25


def find_length_of(item: tuple) -> int:
    io, num_samples, sr = item
    return io.find_length((np.zeros((1, num_samples), np.float32), sr))


def test_find_length_in_a_multiprocessing_pool(stats_io) -> None:
    items = [(stats_io, n, sr) for n, sr in ((48000, 48000), (16000, 16000), (321, 16000), (7, 16000))]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(find_length_of, items) == [25, 25, 1, 0]


# --------------------------------------------------------------------------------------- preprocess
def test_a_clip_changed_before_its_features_is_a_warning_once(tiny_io, rng, caplog, monkeypatch) -> None:
    """Resampled, downmixed, transposed: one WARNING each per process (shown by unconfigured logging), not INFO."""
    monkeypatch.setattr(audio, "_logged_once", set())
    stereo = np.stack([noise(rng, 44100), noise(rng, 44100)]).T.copy()  # [N, C] at 44.1 kHz
    with caplog.at_level(logging.WARNING, logger="contaudio.audio"):
        for _ in range(2):
            tiny_io.preprocess((stereo, 44100))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 3, messages
    for word in ("resampling 44100 Hz", "averaging 2 channels", "transposed"):
        assert any(word in m for m in messages), (word, messages)
    caplog.clear()
    with pytest.raises(ValueError, match="wav is empty"), caplog.at_level(logging.WARNING, logger="contaudio.audio"):
        tiny_io.preprocess((np.zeros((1, 0), np.float32), 16000))  # refused as it is, not "transposed" first
    assert not caplog.records


def test_samples_by_channels_is_transposed_once_logged(tiny_io, rng, caplog) -> None:
    stereo = np.stack([noise(rng, 16000), noise(rng, 16000)])  # [C, N]
    canonical = tiny_io.preprocess((stereo, 16000))
    with caplog.at_level(logging.INFO, logger="contaudio.audio"):
        transposed = tiny_io.preprocess((stereo.T.copy(), 16000))  # [N, C], N > C
    assert transposed[1][0] == canonical[1][0]
    np.testing.assert_array_equal(transposed[1][1], canonical[1][1])
    assert tiny_io.find_length((stereo.T, 16000)) == canonical[1][0]
    mono_column = tiny_io.preprocess((stereo[:1].T.copy(), 16000))  # soundfile's always_2d mono [N, 1]
    np.testing.assert_array_equal(mono_column[1][1], tiny_io.preprocess((stereo[:1], 16000))[1][1])


# ---------------------------------------------------------------------------------------- the model
def espnet_collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """What ESPnet's collate does with the (T, mel) pairs: right-pad with 0.0, lengths in mel frames."""
    mels = [torch.as_tensor(mel) for _, (_, mel), _ in items]
    lengths = torch.tensor([m.shape[0] for m in mels], dtype=torch.long)
    return nn.utils.rnn.pad_sequence(mels, batch_first=True, padding_value=0.0), lengths


@pytest.fixture(scope="module")
def bf16_io() -> ContinuousAudioIO:
    """The class default dtype (bfloat16), as ESPnet builds it for bf16 training."""
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random")


@pytest.mark.parametrize("training", [True, False])
def test_encode_batch_outputs_are_exactly_t_rows(bf16_io, rng, training: bool) -> None:
    items = [bf16_io.preprocess((noise(rng, n)[None], 16000)) for n in (16000, 320, 5 * 16000 + 77, 800)]
    feats, lengths = espnet_collate(items)
    feats = feats.to(torch.bfloat16)  # the training dtype
    with torch.set_grad_enabled(training):
        out = bf16_io.encode_batch(feats, lengths)
    for (seq, (rows, _), mask), tensor in zip(items, out, strict=True):
        assert tensor.shape == (rows, bf16_io.feature_dim()) == (seq.shape[0], bf16_io.feature_dim())
        assert mask.shape == seq.shape
        assert tensor.requires_grad == (training and rows > 0)


def test_dummy_forward_goes_through_the_adaptor_and_reaches_every_weight(bf16_io) -> None:
    bf16_io.encoder.requires_grad_(True)
    try:
        input_embeds = torch.zeros(2, 7, HIDDEN, dtype=torch.bfloat16)
        adaptor = nn.Linear(bf16_io.feature_dim(), HIDDEN, dtype=torch.bfloat16)
        out = adaptor(bf16_io.dummy_forward(ref_tensor=input_embeds))
        loss = input_embeds.sum() + 0.0 * out.sum()
        loss.backward()
        assert out.shape[-1] == HIDDEN and out.dtype == input_embeds.dtype
        assert [name for name, p in bf16_io.encoder.named_parameters() if p.grad is None] == []
    finally:
        bf16_io.encoder.zero_grad(set_to_none=True)


def espnet_tower_state(io: ContinuousAudioIO) -> dict[str, torch.Tensor]:
    """A tower state dict as ESPnet's own class saves it: a whole HF tower (every weight) under model.audio_tower."""
    config = Qwen2_5OmniAudioEncoderConfig(**{k: v for k, v in io.source.encoder_config.items() if k != "model_type"})
    torch.manual_seed(7)
    tower = Qwen2_5OmniAudioEncoder._from_config(config)
    return {f"model.audio_tower.{key}": value for key, value in tower.state_dict().items()}


def test_a_checkpoint_in_espnets_layout_loads_strictly(tiny_io) -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32", seed=3)
    model = nn.ModuleDict({IO_NAME: io})
    tower = espnet_tower_state(io)
    assert "model.audio_tower.audio_bos_eos_token.weight" in tower
    model.load_state_dict({f"{IO_NAME}.{key}": value for key, value in tower.items()}, strict=True)
    for key, value in io.encoder.state_dict().items():
        assert torch.equal(value, tower[f"model.audio_tower.{key}"]), key
    # contaudio's own layout still round-trips, and anything else is still refused
    model.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**model.state_dict(), f"{IO_NAME}.model.audio_tower.extra.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------- without ESPnet
def test_without_espnet_the_class_is_contaudios(monkeypatch) -> None:
    from contaudio.integrations import espnet

    hide_espnet(monkeypatch)
    try:
        without = importlib.reload(espnet)
        assert without.espnet_abs_io() is None and without.ContinuousAudioIO.__mro__[1] is ContinuousAudioIO
        with pytest.raises(ImportError, match="register"):
            without.register()
    finally:
        monkeypatch.undo()
        importlib.reload(espnet)
