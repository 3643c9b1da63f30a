"""contaudio's ESPnet class against ESPnet 202611's own ``ContinuousAudioIO`` on the same tiny checkpoints.

The reference is ESPnet's class itself (its processor call, torchaudio, its length arithmetic, HF's
``get_audio_features`` under it), built from the hub id it accepts, which the private HF cache of
the conftest maps to a tiny perturbed checkpoint. Each comparison is also shown failing, with a
fault injected on contaudio's side and one on ESPnet's.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from espnet2.speechlm.model.speechlm.multimodal_io import audio as espnet_audio
from espnet2.speechlm.model.speechlm.multimodal_io.abs_io import AbsIO
from helpers.audio import load_speech, noise, speech_clips_16k
from helpers.espnet_hub import QWEN3_OMNI, QWEN_OMNI_7B

from contaudio.integrations.espnet import ContinuousAudioIO

FEATURE_ATOL = 1e-5  # log-mel values (measured: ~1e-6)
ENCODE_ATOL = 1e-4  # float32 tower rows (measured: 0 to 2e-7: the same HF kernels on the same features)
RATES = (8000, 16000, 22050, 44100, 48000, 11025)
HIDDEN = 24  # the LM width of ESPnet's adaptor in these tests


@pytest.fixture(scope="module", params=[QWEN_OMNI_7B, QWEN3_OMNI])
def pair(request, tiny_hub) -> tuple[ContinuousAudioIO, espnet_audio.ContinuousAudioIO]:
    """(contaudio's class, ESPnet's class), both loaded by hub id from the same tiny checkpoint, float32 on CPU."""
    tiny_hub(request.param)
    ours = ContinuousAudioIO(encoder_hf_model_tag=request.param, dtype="float32")
    theirs = espnet_audio.ContinuousAudioIO(encoder_hf_model_tag=request.param, dtype="float32")
    return ours.eval(), theirs.eval()


def clips(rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray, int]]:
    """(name, wav [C, N], rate): speech and noise, mono and stereo, float32/float64/int16, many rates and lengths."""
    for name, wav in speech_clips_16k().items():
        yield name, wav[None], 16000
    samples, sr = load_speech("numbers_22k.wav")
    yield "int16 speech 22 kHz as float64", (samples / 32768.0)[None], sr
    yield "int16 speech 16 kHz", load_speech("quick_brown_fox_16k.wav")[0][None], 16000
    for sr in RATES:
        for n in rng.integers(sr // 10, 3 * sr, size=3).tolist():
            yield f"noise {n} @ {sr}", noise(rng, n)[None], sr
    yield "stereo [C, N]", np.stack([noise(rng, 20000), noise(rng, 20000, 0.5)]), 16000
    yield "stereo [N, C]", np.stack([noise(rng, 30001), noise(rng, 30001, 0.01)], axis=1), 22050
    yield "shortest ESPnet takes", noise(rng, 201)[None], 16000


def preprocess_mismatches(ours, theirs, wav: np.ndarray, sr: int) -> list[str]:
    """What differs between the two classes' ``preprocess`` and ``find_length`` on one clip (empty: identical)."""
    (seq, (rows, mel), mask), (e_seq, (e_rows, e_mel), e_mask) = (
        ours.preprocess((wav, sr)),
        theirs.preprocess((wav, sr)),
    )
    problems = []
    if rows != e_rows or seq.shape != e_seq.shape or mask.shape != e_mask.shape:
        problems.append(f"rows {rows} vs ESPnet's {e_rows}")
    if (seq.dtype, mask.dtype) != (e_seq.dtype, e_mask.dtype):
        problems.append(f"dtypes {seq.dtype}/{mask.dtype} vs {e_seq.dtype}/{e_mask.dtype}")
    if mel.shape != e_mel.shape:
        problems.append(f"mel shape {mel.shape} vs {e_mel.shape}")
    elif mel.size and (diff := float(np.abs(mel - e_mel).max())) > FEATURE_ATOL:
        problems.append(f"mel differs by {diff:.2e}")
    if wav.shape[0] <= wav.shape[1] and ours.find_length((wav, sr)) != theirs.find_length((wav, sr)):
        problems.append(f"find_length {ours.find_length((wav, sr))} vs {theirs.find_length((wav, sr))}")
    return problems


def test_is_an_espnet_abs_io_with_espnets_answers(pair) -> None:
    ours, theirs = pair
    assert isinstance(ours, AbsIO) and ours.modality == theirs.modality and ours.is_discrete is theirs.is_discrete
    assert ours.feature_dim() == theirs.feature_dim()
    for method in ("num_stream", "get_vocabulary", "get_stream_interval", "get_stream_weight"):
        with pytest.raises(NotImplementedError):
            getattr(theirs, method)()
        with pytest.raises(NotImplementedError):
            getattr(ours, method)()


def test_preprocess_and_find_length_equal_espnets(pair, rng) -> None:
    ours, theirs = pair
    failures = {name: p for name, wav, sr in clips(rng) if (p := preprocess_mismatches(ours, theirs, wav, sr))}
    assert not failures


def test_find_length_equals_espnets_for_every_length_and_random_rates(pair, rng) -> None:
    ours, theirs = pair
    for n in range(1, 4001):
        wav = np.zeros((1, n), np.float32)
        assert ours.find_length((wav, 16000)) == theirs.find_length((wav, 16000)), n
    for sr, n in zip(
        rng.integers(8000, 96000, size=300).tolist(), rng.integers(1, 200_000, size=300).tolist(), strict=True
    ):
        wav = np.zeros((1, n), np.float32)
        assert ours.find_length((wav, sr)) == theirs.find_length((wav, sr)), (n, sr)
    frames = torch.arange(0, 3000)
    assert torch.equal(ours.find_length(None, before_length=frames), theirs.find_length(None, before_length=frames))
    assert all(ours.find_length(None, before_length=m) == theirs.find_length(None, before_length=m) for m in range(300))


def test_preprocess_rows_equal_espnets_for_every_length(pair, rng) -> None:
    ours, theirs = pair
    for n in range(201, 1300, 7):
        wav = noise(rng, n)[None]
        assert ours.preprocess((wav, 16000))[1][0] == theirs.preprocess((wav, 16000))[1][0], n


def test_a_clip_espnet_cannot_extract_is_refused_clearly(pair) -> None:
    ours, theirs = pair
    wav = np.full((1, 200), 0.1, np.float32)
    with pytest.raises(RuntimeError):  # inside torch.stft's reflection
        theirs.preprocess((wav, 16000))
    with pytest.raises(ValueError, match="more than 200 samples"):
        ours.preprocess((wav, 16000))


def espnet_collate(mels: list[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ESPnet's collate: right-padded with 0.0 to the longest clip, lengths in mel frames, cast to the train dtype."""
    lengths = torch.tensor([m.shape[0] for m in mels])
    batch = torch.zeros(len(mels), int(lengths.max()), mels[0].shape[1])
    for i, mel in enumerate(mels):
        batch[i, : mel.shape[0]] = torch.from_numpy(mel)
    return batch.to(dtype), lengths


def encode_difference(ours, theirs, durations_s: tuple[float, ...], rng) -> float:
    """Largest |ours - ESPnet's| over ``encode_batch`` of one collated batch of noise clips.

    contaudio's batch is compared with ESPnet's class on each clip alone: HF 5.14.1's Qwen3-Omni tower
    under ESPnet's class is batch-dependent (a clip shorter than the batch's longest 100-frame chunk gets
    its conv padding from bias-activated zeros: 2e-3 on the tiny card), while its clip-alone answer is
    what inference gives and what contaudio returns in any batch.
    """
    mels = [ours.preprocess((noise(rng, int(d * 16000))[None], 16000))[1][1] for d in durations_s]
    batch, lengths = espnet_collate(mels, torch.float32)
    with torch.no_grad():
        mine = ours.encode_batch(batch, lengths)
        reference = [theirs.encode_batch(*espnet_collate([mel], torch.float32))[0] for mel in mels]
    assert [m.shape for m in mine] == [r.shape for r in reference]
    return max(float((m - r).abs().max()) for m, r in zip(mine, reference, strict=True))


def test_encode_batch_equals_espnets(pair, rng) -> None:
    ours, theirs = pair
    assert encode_difference(ours, theirs, (0.3, 2.5, 9.1, 1.0), rng) < ENCODE_ATOL


def test_dummy_forward_equals_espnets(pair) -> None:
    ours, theirs = pair
    ref = torch.zeros(2, 3, HIDDEN)
    mine, reference = ours.dummy_forward(ref), theirs.dummy_forward(ref)
    assert mine.shape == reference.shape and mine.dtype == reference.dtype
    torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-4)


def test_worker_copies_hold_no_weights_and_pickle(pair, rng) -> None:
    ours, _ = pair
    worker = pickle.loads(pickle.dumps(ours.copy_for_worker()))
    assert not list(worker.parameters())
    wav = noise(rng, 12345)[None]
    assert preprocess_mismatches(worker, pair[1], wav, 16000) == []


# ----------------------------------------------------------------------------------- checkpoints, both ways
def test_parameter_names_are_espnets(pair) -> None:
    ours, theirs = pair
    assert set(ours.state_dict()) == set(theirs.state_dict())
    dropped = {f"model.audio_tower.{name}" for name in ours.dropped_weights}
    assert {name for name, _ in ours.named_parameters()} == {name for name, _ in theirs.named_parameters()} - dropped


def scrambled_copy(io: ContinuousAudioIO) -> ContinuousAudioIO:
    """Another contaudio IO of the same checkpoint whose every tensor was moved (a load must overwrite them all)."""
    fresh = ContinuousAudioIO(encoder_hf_model_tag=io.source.tag, dtype="float32")
    with torch.no_grad():
        for tensor in fresh.state_dict().values():
            tensor.add_(3.0)
    return fresh


def test_checkpoints_load_strictly_both_ways(pair) -> None:
    ours, theirs = pair
    fresh_ours = scrambled_copy(ours)
    fresh_ours.load_state_dict(theirs.state_dict(), strict=True)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(fresh_ours.state_dict()[key], value, rtol=0, atol=0)
    scrambled = {k: v + 1.0 for k, v in ours.state_dict().items()}
    theirs_copy = pickle.loads(pickle.dumps(theirs))
    theirs_copy.load_state_dict(scrambled, strict=True)
    for key, value in theirs_copy.state_dict().items():
        torch.testing.assert_close(value, scrambled[key], rtol=0, atol=0)


def test_a_job_checkpoint_loads_by_name_through_dcp(pair, tmp_path) -> None:
    """ESPnet's Titan trainer saves and resumes DCP checkpoints by parameter name."""
    import torch.distributed.checkpoint as dcp

    ours, theirs = pair
    dcp.save({"model": torch.nn.ModuleDict({"continuous_audio": theirs}).state_dict()}, checkpoint_id=str(tmp_path))
    target = scrambled_copy(ours)
    state = {"model": torch.nn.ModuleDict({"continuous_audio": target}).state_dict()}
    dcp.load(state, checkpoint_id=str(tmp_path))
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)


def test_freeze_param_patterns_select_the_same_weights(pair) -> None:
    """ESPnet's trainers freeze every parameter whose name starts with a configured prefix."""
    ours, theirs = pair
    pattern = "multimodal_io_dict.continuous_audio.model.audio_tower.layers"

    def selected(io) -> set[str]:
        job = torch.nn.ModuleDict({"multimodal_io_dict": torch.nn.ModuleDict({"continuous_audio": io})})
        return {k for k, _ in job.named_parameters() if k.startswith(pattern + ".") or k == pattern}

    assert selected(ours) == selected(theirs) and selected(ours)


# --------------------------------------------------------------------------------- the checks can fail
def test_the_comparison_fails_with_a_fault_on_our_side(pair, rng) -> None:
    ours, theirs = pair
    processor = ContinuousAudioIO(encoder_hf_model_tag=ours.source.tag, dtype="float32", frontend="processor")
    whole_hops = noise(rng, 32000)[None]  # 200 frames either way: the values differ (normalisation, padded end)
    assert any("mel differs" in p for p in preprocess_mismatches(processor, theirs, whole_hops, 16000))
    # a length where ceil(N / 160) frames give one row more than N // 160 on this tower (Qwen2.5-Omni's processor
    # counts ceil(N / 160); Qwen3-Omni's counts N // 160 as ESPnet's class does, so it is put on max_length here)
    processor.features = replace(processor.features, unpadded=False)
    odd = noise(rng, next(n for n in range(16000, 18000) if processor.find_length(n) != ours.find_length(n)))[None]
    assert any("rows" in p for p in preprocess_mismatches(processor, theirs, odd, 16000))
    first_weight = next(ours.encoder.parameters())  # the first conv: a fault every row sees
    with torch.no_grad():
        first_weight.add_(0.05)
    try:
        assert encode_difference(ours, theirs, (1.0, 2.0), rng) > ENCODE_ATOL
    finally:
        with torch.no_grad():
            first_weight.sub_(0.05)


def test_the_comparison_fails_with_a_fault_on_espnets_side(pair, rng, monkeypatch) -> None:
    ours, theirs = pair
    wav = noise(rng, 30000)[None]
    monkeypatch.setattr(theirs.processor, "mel_filters", theirs.processor.mel_filters * 1.01)  # ESPnet's extractor
    assert any("mel differs" in p for p in preprocess_mismatches(ours, theirs, wav, 16000))
    monkeypatch.undo()
    resample = espnet_audio.torchaudio.functional.resample  # only ESPnet's module sees the faulty resampler
    faulty = SimpleNamespace(functional=SimpleNamespace(resample=lambda w, a, b: resample(w.flip(0), a, b)))
    monkeypatch.setattr(espnet_audio, "torchaudio", faulty)
    assert preprocess_mismatches(ours, theirs, noise(rng, 44100)[None], 44100)
