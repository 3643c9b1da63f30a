"""Bad-input matrix for ContinuousAudioIO: every odd input gives a clear error or the right answer.

Each case calls ``preprocess``, ``find_length`` or ``encode_batch`` of the tiny card and
expects either a TypeError/ValueError whose message names the problem (checked by a
fragment) or the result of the same call on the canonical input. No case may end in an
error raised from inside torch/numpy with an unrelated message.

Memory bound (``test_long_clip_peak_memory_is_linear``): ``preprocess`` of a clip with N
samples at 16 kHz needs at most ``5 * 4 * N`` bytes of extra peak RSS (five float32
copies of the clip: 384 MB for 20 minutes; ~190 MB measured), measured in a fresh
process as peak RSS (``VmHWM``, reset just before the call) minus RSS before the call.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

HOP = 160
N_MELS = 128
SR = 16000


def clip(num_samples: int = 4000, seed: int = 0) -> np.ndarray:
    """A deterministic float32 noise clip."""
    return (np.random.default_rng(seed).standard_normal(num_samples) * 0.1).astype(np.float32)


def with_bad_sample(value: float) -> np.ndarray:
    wav = clip()
    wav[3] = value
    return wav


def mel_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two clips: 450 and 300 valid frames (crosses a 200-frame chunk edge)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 450, N_MELS, generator=generator), torch.tensor([450, 300])


# --------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class Raises:
    error: type[Exception]
    fragment: str


def pre(case_id: str, data: Any, error: type[Exception], fragment: str):
    """``preprocess(data)`` raises ``error`` with ``fragment`` in its message."""
    return pytest.param("preprocess", (data,), Raises(error, fragment), id=case_id)


def length(case_id: str, data: Any, error: type[Exception], fragment: str, before_length: Any = None):
    args = (data,) if before_length is None else (data, before_length)
    return pytest.param("find_length", args, Raises(error, fragment), id=case_id)


def enc(case_id: str, mel: Any, lengths: Any, error: type[Exception], fragment: str):
    return pytest.param("encode_batch", (mel, lengths), Raises(error, fragment), id=case_id)


def dummy(case_id: str, ref: Any, error: type[Exception], fragment: str):
    return pytest.param("dummy_forward", (ref,), Raises(error, fragment), id=case_id)


MEL, LENGTHS = mel_batch()
META = "meta"  # a device whose tensors hold no data: the one "wrong device" a CPU-only machine has
ERROR_CASES = [
    # ---- preprocess: the waveform
    pre("pre-empty", (np.zeros(0, np.float32), SR), ValueError, "wav is empty"),
    pre("pre-0-channels", (np.zeros((0, 64), np.float32), SR), ValueError, "wav is empty"),
    pre("pre-nan", (with_bad_sample(np.nan), SR), ValueError, "NaN/Inf samples (first at index 3)"),
    pre("pre-inf", (with_bad_sample(-np.inf), SR), ValueError, "NaN/Inf samples (first at index 3)"),
    pre("pre-ndim0", (np.array(0.5, np.float32), SR), ValueError, "got 0-D shape ()"),
    pre("pre-numpy-scalar", (np.float32(0.5), SR), TypeError, "numpy array or torch tensor"),
    pre("pre-python-float", (0.5, SR), TypeError, "got float"),
    pre("pre-ndim3", (np.zeros((1, 2, 4000), np.float32), SR), ValueError, "3-D shape (1, 2, 4000)"),
    pre("pre-ndim4", (np.zeros((1, 1, 1, 9), np.float32), SR), ValueError, "4-D shape"),
    pre("pre-complex", (np.zeros(4000, np.complex64), SR), TypeError, "dtype complex64 is not supported"),
    pre("pre-object", (np.zeros(4000, object), SR), TypeError, "dtype object is not supported"),
    pre("pre-bool", (np.zeros(4000, bool), SR), TypeError, "dtype bool is not supported"),
    pre("pre-uint8", (np.zeros(4000, np.uint8), SR), TypeError, "dtype uint8 is not supported"),
    pre("pre-int64", (np.zeros(4000, np.int64), SR), TypeError, "dtype int64 is not supported"),
    pre(
        "pre-torch-complex",
        (torch.zeros(4000, dtype=torch.complex64), SR),
        TypeError,
        "complex tensor dtype torch.complex64",
    ),
    pre("pre-torch-bool", (torch.zeros(4000, dtype=torch.bool), SR), TypeError, "tensor dtype torch.bool"),
    pre("pre-torch-meta", (torch.zeros(4000, device=META), SR), ValueError, "meta device"),
    pre("pre-python-list", ([0.0] * 4000, SR), TypeError, "got list"),
    # ---- preprocess: the sample rate
    pre("pre-sr-zero", (clip(), 0), ValueError, "1000..768000 Hz, got 0"),
    pre("pre-sr-negative", (clip(), -SR), ValueError, "got -16000"),
    pre("pre-sr-float", (clip(), 16000.0), TypeError, "pass e.g. int(sr)"),
    pre("pre-sr-numpy-float", (clip(), np.float64(16000)), TypeError, "pass e.g. int(sr)"),
    pre("pre-sr-bool", (clip(), True), TypeError, "got True (bool)"),
    pre("pre-sr-tensor", (clip(), torch.tensor(SR)), TypeError, "(Tensor)"),
    pre("pre-sr-khz", (clip(), 16), ValueError, "in kHz? pass it in Hz"),
    pre("pre-sr-huge", (clip(), 10**9), ValueError, "got 1000000000"),
    pre("pre-1-sample-44k", (clip(1), 44100), ValueError, "empty after resampling"),
    # ---- preprocess: the container
    pre("pre-not-a-tuple", clip(), TypeError, "(wav, sample_rate) pair, got ndarray"),
    pre("pre-3-tuple", (clip(), SR, 1), TypeError, "(wav, sample_rate) pair"),
    pre("pre-dict", {"wav": clip(), "sr": SR}, TypeError, "pair, got dict"),
    pre("pre-sr-wav-swapped", (SR, clip()), TypeError, "got (sample_rate, wav), as scipy.io.wavfile.read returns it"),
    # ---- find_length
    length("len-float", 1600.0, TypeError, "got float"),
    length("len-negative", -1, ValueError, "must be >= 0, got -1"),
    length("len-bool", True, TypeError, "got bool"),
    length("len-numpy-bool", np.bool_(True), TypeError, "got bool"),
    length("len-none", None, TypeError, "or before_length (mel frames)"),
    length("len-str", "16000", TypeError, "got str"),
    length("len-numpy-array", np.array([16000, 32000]), TypeError, "got ndarray"),
    length("len-before-length-float", None, TypeError, "before_length (mel frames) must be an int", before_length=3.0),
    length("len-before-length-negative", None, ValueError, "before_length (mel frames) must be >= 0", before_length=-2),
    length("len-before-length-tensor-float", None, TypeError, "integer tensor", before_length=torch.tensor([2.0])),
    length("len-tensor-float", torch.tensor([1600.0]), TypeError, "integer tensor, got torch.float32"),
    length("len-tensor-negative", torch.tensor([1600, -1]), ValueError, "must be >= 0"),
    length("len-tensor-bool", torch.tensor([True]), TypeError, "integer tensor, got torch.bool"),
    # find_length((wav, sr)) refuses the clips preprocess refuses, without reading a sample
    length("len-pair-empty", (np.zeros(0, np.float32), SR), ValueError, "wav is empty"),
    length("len-pair-ndim3", (np.zeros((1, 2, 9), np.float32), SR), ValueError, "3-D shape"),
    length("len-pair-bool-wav", (np.zeros(4000, bool), SR), TypeError, "dtype bool"),
    length("len-pair-python-list", ([0.0] * 4000, SR), TypeError, "got list"),
    length("len-pair-sr-float", (clip(), 16000.0), TypeError, "pass e.g. int(sr)"),
    length("len-pair-1-sample-44k", (clip(1), 44100), ValueError, "empty after resampling"),
    length("len-pair-swapped", (SR, clip()), TypeError, "pass (wav, sample_rate)"),
    length("len-list-of-counts", [SR, 2 * SR], TypeError, "for several sample counts pass an integer tensor"),
    # ---- encode_batch: lengths (MEL is [2, 450, 128])
    enc(
        "enc-lengths-size", MEL, torch.tensor([450]), ValueError, "lengths must have shape [2] (one per clip), got (1,)"
    ),
    enc("enc-lengths-2d", MEL, torch.tensor([[450, 300]]), ValueError, "got (1, 2)"),
    enc("enc-lengths-float", MEL, torch.tensor([450.0, 300.0]), TypeError, "integer tensor, got torch.float32"),
    enc("enc-lengths-bool", MEL, torch.tensor([True, True]), TypeError, "got torch.bool"),
    enc("enc-lengths-float-list", MEL, [450.0, 300.5], TypeError, "lengths must be integers"),
    enc("enc-lengths-object-list", MEL, [450, None], TypeError, "dtype object"),
    enc("enc-lengths-meta-device", MEL, LENGTHS.to(META), ValueError, "lengths is on the meta device"),
    enc("enc-lengths-negative", MEL, torch.tensor([450, -3]), ValueError, "lengths must lie in 0..M_max=450"),
    enc("enc-lengths-over-m", MEL, torch.tensor([451, 300]), ValueError, "0..M_max=450, got [451, 300]"),
    enc("enc-lengths-str", MEL, "450", TypeError, "lengths must be a LongTensor [B], got str"),
    # ---- encode_batch: mel
    enc("enc-mel-n-mels", torch.zeros(2, 450, 80), LENGTHS, ValueError, "[B, M_max, 128], got (2, 450, 80)"),
    enc("enc-mel-transposed", MEL.transpose(1, 2), LENGTHS, ValueError, "got (2, 128, 450)"),
    enc("enc-mel-2d", MEL[0], LENGTHS[:1], ValueError, "got (450, 128)"),
    enc("enc-mel-int", MEL.long(), LENGTHS, TypeError, "floating-point tensor, got torch.int64"),
    enc("enc-mel-bool", MEL > 0, LENGTHS, TypeError, "got torch.bool"),
    enc("enc-mel-complex", MEL.to(torch.complex64), LENGTHS, TypeError, "got torch.complex64"),
    enc("enc-mel-numpy-int", MEL.numpy().astype(np.int16), LENGTHS, TypeError, "floating-point array, got numpy int16"),
    enc("enc-mel-numpy-object", MEL.numpy().astype(object), LENGTHS, TypeError, "got numpy object"),
    enc("enc-mel-meta-device", MEL.to(META), LENGTHS, ValueError, "mel is on the meta device"),
    enc("enc-mel-list", MEL.tolist(), LENGTHS, TypeError, "got list"),
    # ---- dummy_forward: the LM's input embeddings (their dtype and device)
    dummy("dummy-none", None, TypeError, "ref_tensor must be a floating-point tensor"),
    dummy("dummy-int", torch.zeros(2, dtype=torch.long), TypeError, "got torch.int64"),
]


def test_clips_of_no_frames_give_empty_rows(tiny_io) -> None:
    """M = 0 is a clip too short for one frame (Gemma 3n's extractor gives none for <= 512 samples): not an error."""
    out = tiny_io.encode_batch(torch.zeros(2, 0, N_MELS), torch.tensor([0, 0]))
    assert [tuple(o.shape) for o in out] == [(0, tiny_io.feature_dim())] * 2


@pytest.mark.parametrize(("method", "args", "expected"), ERROR_CASES)
def test_bad_input_raises_a_clear_error(tiny_io, method: str, args: tuple, expected: Raises) -> None:
    with pytest.raises(expected.error, match=re.escape(expected.fragment)) as info:
        getattr(tiny_io, method)(*args)
    # raised by contaudio's own checks, not deep inside torch/numpy
    assert info.traceback[-1].path.parent.name == "contaudio", info.traceback[-1].path


def test_the_error_matrix_is_big_enough() -> None:
    methods = {case.values[0] for case in ERROR_CASES}
    assert methods == {"preprocess", "find_length", "encode_batch", "dummy_forward"} and len(ERROR_CASES) >= 20


# --------------------------------------------------------------------------- same result
def same(case_id: str, method: str, args: tuple, canonical_args: tuple):
    """``method(*args)`` equals ``method(*canonical_args)`` exactly."""
    return pytest.param(method, args, canonical_args, id=case_id)


def read_only(wav: np.ndarray) -> np.ndarray:
    wav.setflags(write=False)
    return wav


WAV = clip()
WAV_T = torch.from_numpy(WAV)
STEREO = np.stack([clip(seed=1), clip(seed=2)], axis=1).T  # [2, N] view of an [N, 2] buffer: strided rows
PCM = (WAV * 3000).astype(np.int16)
SAME_CASES = [
    # ---- preprocess: odd but valid inputs give exactly the canonical float32 result
    same(
        "pre-float16", "preprocess", ((WAV.astype(np.float16), SR),), ((WAV.astype(np.float16).astype(np.float32), SR),)
    ),
    same("pre-float64", "preprocess", ((WAV.astype(np.float64), SR),), ((WAV, SR),)),
    same("pre-big-endian", "preprocess", ((WAV.astype(">f4"), SR),), ((WAV, SR),)),
    same("pre-negative-stride", "preprocess", ((WAV[::-1], SR),), ((WAV[::-1].copy(), SR),)),
    same("pre-read-only", "preprocess", ((read_only(WAV.copy()), SR),), ((WAV, SR),)),
    same("pre-torch-float32", "preprocess", ((WAV_T, SR),), ((WAV, SR),)),
    same("pre-torch-requires-grad", "preprocess", ((WAV_T.clone().requires_grad_(), SR),), ((WAV, SR),)),
    same("pre-torch-float16", "preprocess", ((WAV_T.half(), SR),), ((WAV_T.half().float().numpy(), SR),)),
    same("pre-torch-bfloat16", "preprocess", ((WAV_T.bfloat16(), SR),), ((WAV_T.bfloat16().float().numpy(), SR),)),
    same("pre-torch-non-contiguous", "preprocess", ((torch.stack([WAV_T, WAV_T], 1)[:, 0], SR),), ((WAV, SR),)),
    same("pre-torch-int16", "preprocess", ((torch.from_numpy(PCM), SR),), ((PCM, SR),)),
    same("pre-stereo-strided", "preprocess", ((STEREO, SR),), ((np.ascontiguousarray(STEREO), SR),)),
    same("pre-sr-numpy-int", "preprocess", ((WAV, np.int64(SR)),), ((WAV, SR),)),
    same("pre-list-pair", "preprocess", ([WAV, SR],), ((WAV, SR),)),
    same("pre-samples-channels", "preprocess", ((np.ascontiguousarray(STEREO.T), SR),), ((STEREO, SR),)),
    # ---- find_length
    same("len-numpy-int", "find_length", (np.int64(16000),), (16000,)),
    same(
        "len-tensor-int32",
        "find_length",
        (torch.tensor([16000, 1, 0], dtype=torch.int32),),
        (torch.tensor([16000, 1, 0]),),
    ),
    same("len-pair-sr-numpy-int", "find_length", ((WAV, np.int32(SR)),), (WAV.size,)),
    same("len-pair-tensor", "find_length", ((WAV_T, SR),), (WAV.size,)),
    same("len-before-length", "find_length", (None, -(-WAV.size // 160)), (WAV.size,)),  # mel frames
    same("len-pair-samples-channels", "find_length", ((STEREO.T, SR),), ((STEREO, SR),)),
    # ---- encode_batch (MEL [2, 450, 128], LENGTHS [450, 300])
    same(
        "enc-mel-non-contiguous",
        "encode_batch",
        (MEL.transpose(1, 2).contiguous().transpose(1, 2), LENGTHS),
        (MEL, LENGTHS),
    ),
    same("enc-mel-numpy", "encode_batch", (MEL.numpy(), LENGTHS), (MEL, LENGTHS)),
    same(
        "enc-mel-numpy-negative-stride",
        "encode_batch",
        (MEL.numpy()[::-1], LENGTHS.flip(0)),
        (MEL.flip(0), LENGTHS.flip(0)),
    ),
    same("enc-mel-float64", "encode_batch", (MEL.double(), LENGTHS), (MEL, LENGTHS)),
    same("enc-lengths-int32", "encode_batch", (MEL, LENGTHS.int()), (MEL, LENGTHS)),
    same("enc-lengths-list", "encode_batch", (MEL, [450, 300]), (MEL, LENGTHS)),
    same("enc-lengths-numpy-uint16", "encode_batch", (MEL, np.array([450, 300], np.uint16)), (MEL, LENGTHS)),
]


def assert_same(got: Any, want: Any) -> None:
    assert type(got) is type(want)
    if isinstance(got, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(got, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    elif isinstance(got, np.ndarray):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    else:
        assert got == want


@pytest.mark.parametrize(("method", "args", "canonical_args"), SAME_CASES)
def test_odd_but_valid_input_gives_the_canonical_result(tiny_io, method: str, args: tuple, canonical_args) -> None:
    call = getattr(tiny_io, method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable NumPy array" warning
        got = call(*args)
    assert_same(got, call(*canonical_args))


# --------------------------------------------------------------------------- edge results
def test_one_sample_clip_gives_one_frame_and_no_rows(tiny_io) -> None:
    tokens, (rows, mel), mask = tiny_io.preprocess((np.array([0.25], np.float32), SR))
    assert rows == 0 and mel.shape == (1, N_MELS) and np.isfinite(mel).all()
    assert tokens.shape == (0, 1) and mask.shape == (0, 1)
    assert tiny_io.find_length(1) == 0 == tiny_io.find_length((np.array([0.25], np.float32), SR))
    (out,) = tiny_io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([1]))
    assert out.shape == (0, tiny_io.feature_dim())


def test_find_length_counts_huge_clips_exactly(tiny_io) -> None:
    """Python ints never overflow: 10**12 samples -> 6.25e9 frames -> 1.5625e9 rows."""
    assert tiny_io.find_length(10**12) == 1_562_500_000
    assert tiny_io.find_length(torch.tensor([10**12])).tolist() == [1_562_500_000]


def test_find_length_honours_the_policies_preprocess_honours() -> None:
    from helpers.checkpoints import TINY_QWEN_OMNI

    from contaudio import ContinuousAudioIO

    strict = ContinuousAudioIO(
        encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32",
        resample="raise", multichannel="raise", max_duration_s=1.0,
    )  # fmt: skip
    for data, fragment in [
        ((clip(2205), 22050), "22050 Hz"),
        ((np.stack([clip(1600)] * 2), SR), "2 channels"),
        ((clip(SR + 1), SR), "max_duration_s"),
    ]:
        for method in (strict.preprocess, strict.find_length):
            with pytest.raises(ValueError, match=re.escape(fragment)):
                method(data)


def test_empty_batch_and_all_short_clips(tiny_io) -> None:
    assert tiny_io.encode_batch(torch.zeros(0, 10, N_MELS), torch.zeros(0, dtype=torch.long)) == []
    outs = tiny_io.encode_batch(torch.zeros(2, 2, N_MELS), torch.tensor([2, 1]))
    assert [tuple(o.shape) for o in outs] == [(0, 48), (0, 48)]


def test_nan_in_padding_is_ignored_and_nan_in_a_clip_stays_in_it(tiny_io) -> None:
    """A non-finite mel frame never leaks into the padding's or another clip's features."""
    mel, lengths = mel_batch()
    reference = tiny_io.encode_batch(mel, lengths)
    padded_nan = mel.clone()
    padded_nan[1, 300:] = float("nan")
    assert_same(tiny_io.encode_batch(padded_nan, lengths), reference)

    clip_nan = mel.clone()
    clip_nan[0, 10] = float("inf")
    poisoned, clean = tiny_io.encode_batch(clip_nan, lengths)
    assert_same(clean, reference[1])
    bad_rows = (~torch.isfinite(poisoned)).any(dim=1)
    # frame 10 lies in the first 200-frame attention chunk: its 50 rows, and only those
    assert bad_rows[:50].all() and not bad_rows[50:].any()
    torch.testing.assert_close(poisoned[50:], reference[0][50:], rtol=0, atol=0)


# --------------------------------------------------------------------------- long clips
# Peak RSS is read from the probe's own address space (VmHWM in /proc/self/status), reset
# after warm-up through /proc/self/clear_refs: getrusage's ru_maxrss survives exec and would
# report the parent pytest process's peak instead of the probe's.
MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, psutil
    from contaudio import ContinuousAudioIO
    def peak_rss():
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # kB
    io = ContinuousAudioIO(encoder_hf_model_tag=sys.argv[1], weights="random", dtype="float32").copy_for_worker()
    io.preprocess((np.zeros(16000, np.float32), 16000))  # warm up caches (filters, window)
    wav = np.random.default_rng(0).standard_normal(int(sys.argv[2]), dtype=np.float32)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak to the current RSS
    before = psutil.Process().memory_info().rss
    _, (rows, mel), _ = io.preprocess((wav, 16000))
    print(json.dumps({"extra_peak": peak_rss() - before, "rows": rows, "frames": mel.shape[0]}))
    """
)
LONG_CLIP_S = 20 * 60
PEAK_BYTES_PER_SAMPLE = 5 * 4  # five float32 copies of the clip (measured: ~2.5)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_long_clip_peak_memory_is_linear(tiny_io) -> None:
    """A 20-minute clip is featurised whole, in a fresh process, under 5 float32 copies of itself."""
    from helpers.checkpoints import TINY_QWEN_OMNI

    num_samples = LONG_CLIP_S * SR
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, TINY_QWEN_OMNI, str(num_samples)],
        capture_output=True, text=True, timeout=180, env=env, check=True,
    )  # fmt: skip
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["frames"] == num_samples // HOP and probe["rows"] == tiny_io.find_length(num_samples)
    bound = PEAK_BYTES_PER_SAMPLE * num_samples  # 384 MB
    assert 0 < probe["extra_peak"] < bound, f"{probe['extra_peak'] / 2**20:.0f} MiB >= {bound / 2**20:.0f} MiB"
