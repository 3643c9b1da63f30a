"""contaudio's stand-in for ``torchaudio.transforms.MelSpectrogram`` (what HF's Granite Speech extractor runs on
where torchaudio is missing): its maths, and where and how long it is installed.

The maths is checked against two references that share no code with contaudio:
- a mel spectrogram written here from its definition in numpy float64 (reflect padding, framing, a periodic
  Hann window centred in the FFT frame, ``rfft``, power, HTK triangles from the mel formula);
- where torchaudio imports (ESPnet's environment), ``torchaudio.transforms.MelSpectrogram`` itself, built
  with the arguments HF's extractor passes.
Each check fails on an injected fault, on the stand-in's side and on the reference's.

The stand-in is installed only inside ``torchaudio_for_hf_granite_speech`` (which ``hf_extractor`` and the
family's ``hf_inputs`` open), restored on exit and on error, logged once; where torchaudio is installed,
HF's extractor runs on torchaudio and the context changes nothing.
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import pytest
import torch
from helpers.audio import noise
from transformers.audio_utils import mel_filter_bank
from transformers.models.granite_speech import feature_extraction_granite_speech as hf_module
from transformers.utils import import_utils

from contaudio.encoders import get_family
from contaudio.features import torchaudio_mel
from contaudio.features.granite_speech import GraniteSpeechFeatures
from contaudio.features.torchaudio_mel import STAND_IN, STAND_IN_NOTICE, torchaudio_for_hf_granite_speech

pytestmark = pytest.mark.usefixtures("one_thread")
FEATURES = GraniteSpeechFeatures()
# the arguments HF's extractor gives torchaudio's MelSpectrogram (its melspec_kwargs)
MELSPEC_KWARGS = {"sample_rate": FEATURES.sampling_rate, "n_fft": FEATURES.n_fft, "win_length": FEATURES.win_length,
                  "hop_length": FEATURES.stft_hop, "n_mels": FEATURES.mel_bins}  # fmt: skip
REL_TOLERANCE = 2e-5  # of the peak; measured <= 4.6e-6 (torchaudio and the stand-in place mel edges in float32)
# the smallest fault below (a symmetric window) is off by 4e-3 of the peak
HTK_FACTOR, HTK_BREAK_HZ = 2595.0, 700.0  # the HTK mel scale, from its definition
# the shortest clip HF takes (n_fft // 2 + 1), a window's length, hop edges, an odd size, 1 s and a bit
SIZES = [257, 400, 480, 481, 12345, 16000, 16161]
FAULTS = {  # name: (stand-in constant, faulty value, the same fault for the references)
    "symmetric window": ("PERIODIC_WINDOW", False, {"periodic": False}),
    "frames not centred": ("CENTER", False, {"center": False}),
    "zero padding": ("PAD_MODE", "constant", {"pad_mode": "constant"}),
    "magnitude, not power": ("POWER", 1.0, {"power": 1.0}),
    "mel scale from 20 Hz": ("F_MIN", 20.0, {"f_min": 20.0}),
}
STAND_IN_ONLY = pytest.mark.skipif(not torchaudio_mel.stand_in_needed(), reason="torchaudio is installed here")


def htk_mel(hz: np.ndarray) -> np.ndarray:
    return HTK_FACTOR * np.log10(1.0 + hz / HTK_BREAK_HZ)


def htk_hz(mel: np.ndarray) -> np.ndarray:
    return HTK_BREAK_HZ * (10.0 ** (mel / HTK_FACTOR) - 1.0)


def mel_triangles(n_freqs: int, n_mels: int, sample_rate: int, f_min: float) -> np.ndarray:
    """``[n_freqs, n_mels]``: filter ``m`` rises from edge ``m`` to 1 at edge ``m + 1`` and falls to 0 at edge
    ``m + 2``, the ``n_mels + 2`` edges evenly spaced in HTK mel from ``f_min`` to Nyquist; no normalisation."""
    bins_hz = np.linspace(0.0, sample_rate / 2, n_freqs)[:, None]
    edges = htk_hz(np.linspace(htk_mel(np.float64(f_min)), htk_mel(np.float64(sample_rate / 2)), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising, falling = (bins_hz - lower) / (centre - lower), (upper - bins_hz) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def reference_mel(wav: np.ndarray, *, periodic: bool = True, center: bool = True, pad_mode: str = "reflect",
                  power: float = 2.0, f_min: float = 0.0) -> np.ndarray:  # fmt: skip
    """The mel power spectrogram ``[n_mels, frames]`` of ``wav`` in float64, from its definition."""
    n_fft, win, hop = FEATURES.n_fft, FEATURES.win_length, FEATURES.stft_hop
    denominator = win if periodic else win - 1
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / denominator)
    window = np.zeros(n_fft)
    start = (n_fft - win) // 2
    window[start : start + win] = hann  # a shorter window sits in the middle of the FFT frame
    x = np.pad(wav.astype(np.float64), n_fft // 2, mode=pad_mode) if center else wav.astype(np.float64)
    frames = np.stack([x[t * hop : t * hop + n_fft] for t in range(1 + (len(x) - n_fft) // hop)])
    spectrum = np.abs(np.fft.rfft(frames * window, axis=-1)) ** power  # [frames, n_fft // 2 + 1]
    return (spectrum @ mel_triangles(n_fft // 2 + 1, FEATURES.mel_bins, FEATURES.sampling_rate, f_min)).T


def stand_in_mel(wav: np.ndarray) -> np.ndarray:
    """The stand-in, built as HF's extractor builds torchaudio's (module constants read at construction)."""
    return torchaudio_mel.MelSpectrogram(**MELSPEC_KWARGS)(torch.from_numpy(wav)).double().numpy()


def assert_same_mel(got: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert got.shape == reference.shape, f"{what}: shape {got.shape} != {reference.shape}"
    error, peak = float(np.abs(got - reference).max()), float(np.abs(reference).max())
    assert error <= REL_TOLERANCE * peak, f"{what}: max error {error:.3g} > {REL_TOLERANCE:g} x peak {peak:.3g}"


def clips(rng: np.random.Generator) -> dict[str, np.ndarray]:
    fading = noise(rng, 16000) * np.exp(-np.linspace(0, 12, 16000)).astype(np.float32)
    return {**{f"noise {n}": noise(rng, n) for n in SIZES}, "fading 16000": fading}


def test_the_numpy_reference_filters_are_transformers_htk_filters() -> None:
    """The triangles written here from the formula are those of another implementation, transformers'."""
    ours = mel_triangles(FEATURES.n_fft // 2 + 1, FEATURES.mel_bins, FEATURES.sampling_rate, 0.0)
    theirs = mel_filter_bank(num_frequency_bins=FEATURES.n_fft // 2 + 1, num_mel_filters=FEATURES.mel_bins,
                             min_frequency=0.0, max_frequency=FEATURES.sampling_rate / 2,
                             sampling_rate=FEATURES.sampling_rate, norm=None, mel_scale="htk")  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_stand_in_equals_the_spectrogram_from_its_definition(rng) -> None:
    for name, wav in clips(rng).items():
        assert_same_mel(stand_in_mel(wav), reference_mel(wav), name)
    batch = np.stack([noise(rng, 4000), noise(rng, 4000)])  # HF calls it on a [B, N] batch
    batched = torchaudio_mel.MelSpectrogram(**MELSPEC_KWARGS)(torch.from_numpy(batch)).double().numpy()
    for row, wav in zip(batched, batch, strict=True):
        assert_same_mel(row, reference_mel(wav), "batch row")


@pytest.mark.parametrize("fault", FAULTS)
def test_the_definition_check_fails_on_a_fault_on_either_side(fault: str, rng, monkeypatch) -> None:
    constant, value, reference_fault = FAULTS[fault]
    wav = noise(rng, 12345)
    with pytest.raises(AssertionError):  # the reference with the fault
        assert_same_mel(stand_in_mel(wav), reference_mel(wav, **reference_fault), fault)
    monkeypatch.setattr(torchaudio_mel, constant, value)
    with pytest.raises(AssertionError):  # the stand-in with the fault
        assert_same_mel(stand_in_mel(wav), reference_mel(wav), fault)


def torchaudio_mel_spectrogram(torchaudio, fault: dict | None = None) -> torch.nn.Module:
    """torchaudio's own ``MelSpectrogram`` as HF's extractor builds it (or with one of :data:`FAULTS`)."""
    fault = dict(fault or {})
    if "periodic" in fault:
        fault["window_fn"] = partial(torch.hann_window, periodic=fault.pop("periodic"))
    return torchaudio.transforms.MelSpectrogram(**MELSPEC_KWARGS, **fault)


def test_stand_in_equals_torchaudio(rng) -> None:
    torchaudio = pytest.importorskip("torchaudio")
    assert FEATURES.hf_extractor().melspec_kwargs == MELSPEC_KWARGS  # what HF builds torchaudio's transform with
    transform = torchaudio_mel_spectrogram(torchaudio)
    for name, wav in clips(rng).items():
        reference = transform(torch.from_numpy(wav)).double().numpy()
        assert_same_mel(stand_in_mel(wav), reference, name)


@pytest.mark.parametrize("fault", FAULTS)
def test_the_torchaudio_check_fails_on_a_fault_on_either_side(fault: str, rng, monkeypatch) -> None:
    torchaudio = pytest.importorskip("torchaudio")
    constant, value, reference_fault = FAULTS[fault]
    wav = torch.from_numpy(noise(rng, 12345))
    faulty = torchaudio_mel_spectrogram(torchaudio, reference_fault)(wav).double().numpy()
    with pytest.raises(AssertionError):
        assert_same_mel(stand_in_mel(wav.numpy()), faulty, fault)
    monkeypatch.setattr(torchaudio_mel, constant, value)
    reference = torchaudio_mel_spectrogram(torchaudio)(wav).double().numpy()
    with pytest.raises(AssertionError):
        assert_same_mel(stand_in_mel(wav.numpy()), reference, fault)


def module_state() -> dict[str, object]:
    return dict(vars(hf_module))


def assert_untouched(before: dict[str, object]) -> None:
    after = module_state()
    assert after.keys() == before.keys() and all(after[key] is before[key] for key in before)


def test_hfs_extractor_runs_on_torchaudio_itself_where_it_is_installed() -> None:
    torchaudio = pytest.importorskip("torchaudio")
    before = module_state()
    assert before["torchaudio"] is torchaudio and before["requires_backends"] is import_utils.requires_backends
    with torchaudio_for_hf_granite_speech() as stand_in:
        assert not stand_in
        assert_untouched(before)
    assert type(FEATURES.hf_extractor().mel_filters) is torchaudio.transforms.MelSpectrogram
    assert_untouched(before)


@STAND_IN_ONLY
def test_without_torchaudio_the_module_is_hfs_own_outside_the_context() -> None:
    assert "torchaudio" not in vars(hf_module) and hf_module.requires_backends is import_utils.requires_backends
    with pytest.raises(ImportError, match="torchaudio"):  # HF's own refusal: nothing contaudio installed
        hf_module.GraniteSpeechFeatureExtractor()


@STAND_IN_ONLY
def test_the_stand_in_is_installed_only_inside_the_context_and_restored_on_error() -> None:
    before = module_state()
    with torchaudio_for_hf_granite_speech() as stand_in:
        assert stand_in and hf_module.torchaudio is STAND_IN
        assert hf_module.requires_backends is torchaudio_mel.requires_backends_but_torchaudio
        with torchaudio_for_hf_granite_speech():  # nested: the outer one still holds it
            pass
        assert hf_module.torchaudio is STAND_IN
    assert_untouched(before)
    with pytest.raises(KeyError), torchaudio_for_hf_granite_speech():
        raise KeyError("an error inside")
    assert_untouched(before)


@STAND_IN_ONLY
def test_the_stand_in_is_logged_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(torchaudio_mel._INSTALLATION, "notified", False)
    with caplog.at_level(logging.WARNING, logger=torchaudio_mel.__name__):
        for _ in range(3):
            with torchaudio_for_hf_granite_speech():
                pass
    notices = [record.getMessage() for record in caplog.records if record.name == torchaudio_mel.__name__]
    assert notices == [STAND_IN_NOTICE]
    assert STAND_IN_NOTICE.startswith(
        "torchaudio is not installed: HF's GraniteSpeechFeatureExtractor runs on contaudio's stand-in for "
        "torchaudio.transforms.MelSpectrogram"
    )


@STAND_IN_ONLY
def test_hf_extractor_and_the_oracle_open_the_context_themselves_and_close_it(rng) -> None:
    """``hf_extractor`` builds HF's extractor and ``hf_inputs`` calls it with no context around them; the module
    is HF's own afterwards, also when HF's extractor raises (a clip too short for its reflect padding)."""
    before = module_state()
    extractor = FEATURES.hf_extractor()
    assert type(extractor) is hf_module.GraniteSpeechFeatureExtractor
    assert isinstance(extractor.mel_filters, torchaudio_mel.MelSpectrogram)
    assert_untouched(before)
    family = get_family("granite_speech")
    features, frames = family.hf_inputs(extractor, noise(rng, 16000))
    assert features.shape == (1, FEATURES.frames(16000), FEATURES.n_mels) and frames == FEATURES.frames(16000)
    assert_untouched(before)
    with pytest.raises(RuntimeError):
        family.hf_inputs(extractor, noise(rng, FEATURES.min_samples - 1))
    assert_untouched(before)
    with pytest.raises(ImportError, match="torchaudio"):  # outside the context, HF's extractor is HF's again
        extractor([torch.from_numpy(noise(rng, 16000))])


@STAND_IN_ONLY
def test_the_untouched_check_catches_a_stand_in_left_behind(monkeypatch) -> None:
    """The check the tests above rely on fails when the context does not put HF's module back."""
    before = module_state()
    restore = torchaudio_mel._INSTALLATION.exit
    monkeypatch.setattr(torchaudio_mel._INSTALLATION, "exit", lambda module: None)
    with torchaudio_for_hf_granite_speech():
        pass
    try:
        with pytest.raises(AssertionError):
            assert_untouched(before)
    finally:
        restore(hf_module)
    assert_untouched(before)
