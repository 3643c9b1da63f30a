"""ContinuousAudioIO: the seed's API, shapes, lengths, padding, grad mode, worker copies."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers.audio import load_speech, noise
from helpers.checkpoints import TINY_QWEN_OMNI

from contaudio import AbsIO, ContinuousAudioIO
from contaudio import io as io_module
from contaudio.encoders.qwen2_5_omni import qwen2_5_omni_rows
from contaudio.io import check_attn_implementation
from contaudio.lengths import mel_frames

HOP = 160
# N edge cases: multiples of the hop +- 1 around the 2-frame (no row) boundary and chunk edges
EDGE_SAMPLES = [1, 159, 160, 161, 319, 320, 321, 479, 480, 481, 31999, 32000, 32001, 64159, 64160, 64161]


def pad_batch(mels: list[np.ndarray], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([m.shape[0] for m in mels])
    batch = torch.zeros(len(mels), int(lengths.max()) + extra, mels[0].shape[1])
    for i, m in enumerate(mels):
        batch[i, : m.shape[0]] = torch.from_numpy(m)
    return batch, lengths


def test_is_an_absio(tiny_io) -> None:
    assert isinstance(tiny_io, AbsIO) and isinstance(tiny_io, torch.nn.Module)
    assert tiny_io.feature_dim() == 48 and tiny_io.n_mels == 128 and tiny_io.sample_rate == 16000


def test_default_arguments_are_the_seeds() -> None:
    import inspect

    params = inspect.signature(ContinuousAudioIO).parameters
    assert params["encoder_choice"].default == "huggingface"
    assert params["encoder_hf_model_tag"].default == "Qwen/Qwen2.5-Omni-7B"
    assert params["attn_implementation"].default is None
    assert params["dtype"].default == "bfloat16"
    assert params["device"].default == "cpu"


def test_preprocess_shapes_and_dtypes(tiny_io, rng) -> None:
    wav = noise(rng, 16000)
    seq, (rows, mel), mask = tiny_io.preprocess((wav, 16000))
    assert mel.shape == (100, 128) and mel.dtype == np.float32
    assert rows == 25 == seq.shape[0] == mask.shape[0]
    assert seq.shape == (25, 1) and not seq.any() and seq.dtype == np.int64
    assert mask.shape == (25, 1) and not mask.any()
    assert mel.flags.owndata and mel.flags.c_contiguous


@pytest.mark.parametrize("num_samples", EDGE_SAMPLES)
def test_find_length_equals_preprocess_and_encoder_rows(tiny_io, rng, num_samples: int) -> None:
    _, (rows, mel), _ = tiny_io.preprocess((noise(rng, num_samples), 16000))
    assert mel.shape[0] == mel_frames(num_samples, HOP)
    with torch.inference_mode():
        (feats,) = tiny_io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
    assert tiny_io.find_length(num_samples) == rows == feats.shape[0]
    assert tiny_io.find_length(None, before_length=mel.shape[0]) == rows  # before_length: mel frames


def test_find_length_types(tiny_io, rng) -> None:
    counts = torch.tensor(EDGE_SAMPLES)
    out = tiny_io.find_length(counts)
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [tiny_io.find_length(n) for n in EDGE_SAMPLES]
    assert torch.equal(tiny_io.find_length(None, before_length=mel_frames(counts, HOP)), out)
    wav = noise(rng, 2 * 16000)
    assert tiny_io.find_length((wav, 16000)) == 50
    assert isinstance(tiny_io.find_length((wav, 16000)), int)
    assert tiny_io.find_length(0) == 0


def test_find_length_follows_resampling(tiny_io) -> None:
    samples, sr = load_speech("numbers_22k.wav")
    assert sr == 22050
    _, (rows, _), _ = tiny_io.preprocess((samples, sr))
    assert tiny_io.find_length((samples, sr)) == rows


def test_too_short_clips_give_zero_rows_everywhere(tiny_io, rng) -> None:
    """<= 320 samples is <= 2 mel frames: no row, and the rest of the batch is unaffected."""
    short = tiny_io.preprocess((noise(rng, 320), 16000))
    long = tiny_io.preprocess((noise(rng, 8000), 16000))
    assert short[1][0] == 0 and short[0].shape == (0, 1) and short[2].shape == (0, 1)
    batch, lengths = pad_batch([short[1][1], long[1][1]])
    with torch.inference_mode():
        feats = tiny_io.encode_batch(batch, lengths)
        alone = tiny_io.encode_batch(batch[1:, : lengths[1]], lengths[1:])[0]
    assert feats[0].shape == (0, 48)
    torch.testing.assert_close(feats[1], alone, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        only_short = tiny_io.encode_batch(batch[:1, :2], lengths[:1])
    assert only_short[0].shape == (0, 48)


def test_padded_batch_equals_one_at_a_time(tiny_io, rng) -> None:
    sizes = [480, 16000, 32000 + 321, 70000, 3200, 100000]  # crosses several 200-frame chunks
    mels = [tiny_io.preprocess((noise(rng, n), 16000))[1][1] for n in sizes]
    batch, lengths = pad_batch(mels, extra=37)  # padded past its longest clip
    with torch.inference_mode():
        batched = tiny_io.encode_batch(batch, lengths)
        for i, mel in enumerate(mels):
            (alone,) = tiny_io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            assert batched[i].shape == (qwen2_5_omni_rows(mel.shape[0]), 48)
            torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)


def test_padding_content_is_ignored(tiny_io, rng) -> None:
    mel = torch.from_numpy(tiny_io.preprocess((noise(rng, 16000), 16000))[1][1])
    clean = torch.zeros(1, 150, 128)
    dirty = torch.full((1, 150, 128), 7.0)
    clean[0, :100] = dirty[0, :100] = mel
    with torch.inference_mode():
        a = tiny_io.encode_batch(clean, torch.tensor([100]))[0]
        b = tiny_io.encode_batch(dirty, torch.tensor([100]))[0]
    torch.testing.assert_close(a, b)


def test_encode_batch_follows_callers_grad_mode(tiny_io, rng) -> None:
    mel = torch.from_numpy(tiny_io.preprocess((noise(rng, 8000), 16000))[1][1])[None]
    feats = tiny_io.encode_batch(mel, torch.tensor([mel.shape[1]]))[0]
    assert feats.requires_grad
    feats.sum().backward()
    assert tiny_io.encoder.conv1.weight.grad is not None
    tiny_io.encoder.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert not tiny_io.encode_batch(mel, torch.tensor([mel.shape[1]]))[0].requires_grad


def test_dummy_forward_is_the_raw_output_in_the_callers_dtype(tiny_io) -> None:
    """[rows, D] of a silent clip (not a scalar): ESPnet feeds it through Linear(D, hidden)."""
    tiny_io.encoder.zero_grad(set_to_none=True)
    ref = torch.zeros(3, dtype=torch.float64)
    out = tiny_io.dummy_forward(ref)
    assert out.dtype == torch.float64 and out.shape == (1, tiny_io.feature_dim())
    (0.0 * out.sum()).backward()
    missing = [name for name, p in tiny_io.encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    tiny_io.encoder.zero_grad(set_to_none=True)


@pytest.mark.parametrize("cast", ["to", "half"])
def test_a_cast_of_the_whole_module_is_followed(case, cast: str, rng) -> None:
    """A trainer casting the model (``model.to(torch.bfloat16)``, ``.half()``) casts the tower's weights:
    encode_batch and dummy_forward compute in the weights' dtype (they used to feed float32 mel to bf16 convs)."""
    io = ContinuousAudioIO(encoder_hf_model_tag=case.card, weights="random", dtype="float32")
    mel = torch.from_numpy(rng.standard_normal((2, 300, io.n_mels), dtype=np.float32))
    lengths = torch.tensor([300, 210])
    with torch.no_grad():
        before = io.encode_batch(mel, lengths)
        dtype = torch.bfloat16 if cast == "to" else torch.float16
        io.to(torch.bfloat16) if cast == "to" else io.half()
        after = io.encode_batch(mel, lengths)
    assert io.torch_dtype == dtype and io.copy_for_worker().torch_dtype == torch.float32  # a copy: the choice
    for cast_rows, rows in zip(after, before, strict=True):
        assert cast_rows.dtype == dtype and cast_rows.shape == rows.shape
        assert float((cast_rows.float() - rows).norm() / rows.norm()) < 0.05  # the same model, rounded
    out = io.dummy_forward(torch.zeros(1))
    (0.0 * out.sum()).backward()
    assert not [name for name, p in io.encoder.named_parameters() if p.requires_grad and p.grad is None]


def test_copy_for_worker_is_light_and_equal(tiny_io, rng) -> None:
    worker = tiny_io.copy_for_worker()
    assert worker.encoder is None and sum(1 for _ in worker.parameters()) == 0
    assert tiny_io.encoder is not None  # the original keeps its weights
    restored = pickle.loads(pickle.dumps(worker))
    wav = noise(rng, 12345)
    ours = tiny_io.preprocess((wav, 16000))
    for copy in (worker, restored):
        theirs = copy.preprocess((wav, 16000))
        assert theirs[1][0] == ours[1][0]
        np.testing.assert_array_equal(theirs[1][1], ours[1][1])
        assert copy.find_length(12345) == tiny_io.find_length(12345)
        assert copy.feature_dim() == tiny_io.feature_dim()
    with pytest.raises(RuntimeError, match="copy_for_worker"):
        worker.encode_batch(torch.zeros(1, 10, 128), torch.tensor([10]))
    assert len(pickle.dumps(worker)) < 50_000


def test_preprocess_accepts_int_pcm_and_stereo(tiny_io) -> None:
    samples, sr = load_speech("quick_brown_fox_16k.wav")
    as_float = samples.astype(np.float32) / 32768
    _, (_, from_int), _ = tiny_io.preprocess((samples, sr))
    _, (_, from_float), _ = tiny_io.preprocess((as_float, sr))
    np.testing.assert_allclose(from_int, from_float, atol=1e-6)
    _, (_, stereo), _ = tiny_io.preprocess((np.stack([as_float, as_float]), sr))
    np.testing.assert_allclose(stereo, from_float, atol=1e-6)


def test_policies_can_raise(rng) -> None:
    strict = ContinuousAudioIO(
        encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32",
        resample="raise", multichannel="raise", max_duration_s=1.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="22050 Hz"):
        strict.preprocess((noise(rng, 2205), 22050))
    with pytest.raises(ValueError, match="2 channels"):
        strict.preprocess((np.stack([noise(rng, 1600)] * 2), 16000))
    with pytest.raises(ValueError, match="max_duration_s"):
        strict.preprocess((noise(rng, 16001 * 2), 16000))


def test_no_300s_limit(tiny_io, rng) -> None:
    """Qwen2.5-Omni's encoder is chunked: a 301 s clip is featurised whole, never cut."""
    num_samples = 301 * 16000
    rows = tiny_io.find_length(num_samples)
    _, (t, mel), _ = tiny_io.preprocess((noise(rng, num_samples, 0.01), 16000))
    assert mel.shape[0] == 30100 and t == rows == 7525


def test_normalize_option(rng) -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32", normalize=True)
    wav = noise(rng, 16000, scale=0.3) + 0.5
    _, (_, a), _ = io.preprocess((wav, 16000))
    _, (_, b), _ = io.preprocess((wav * 3.0, 16000))
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"encoder_choice": "espnet"}, ValueError, "encoder_choice"),
        ({"dtype": "int8"}, ValueError, "unsupported dtype"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"attn_implementation": "flash"}, ValueError, "attn_implementation"),
        ({"attn_implementation": "flash_attention_2"}, ValueError, "flash"),
        ({"weights": "none"}, ValueError, "weights must be"),
        ({"resample": "maybe"}, ValueError, "resample policy"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type, message: str) -> None:
    args = {"encoder_hf_model_tag": TINY_QWEN_OMNI, "weights": "random", "dtype": "float32", **kwargs}
    with pytest.raises(error, match=message):
        ContinuousAudioIO(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_request_without_cuda_is_clear() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", device="cuda")


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "bfloat16", "float16", "float32", "auto"])
def test_dtype_aliases(dtype: str) -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype=dtype)
    assert io.encoder.conv1.weight.dtype == io.torch_dtype
    assert io.dtype_choice.reason.startswith("auto" if dtype == "auto" else "requested")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attn_implementations_agree(rng, attn: str) -> None:
    """Attention stays block-diagonal whatever the kernel (a > 8 s clip spans several chunks)."""
    ref = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32")
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32",
                           attn_implementation=attn)  # fmt: skip
    mel = torch.from_numpy(ref.preprocess((noise(rng, 12 * 16000), 16000))[1][1])[None]
    lengths = torch.tensor([mel.shape[1]])
    with torch.inference_mode():
        torch.testing.assert_close(io.encode_batch(mel, lengths)[0], ref.encode_batch(mel, lengths)[0],
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    ("attn", "device", "dtype", "message"),
    [
        ("flash_attention_2", "cpu", torch.bfloat16, "needs a CUDA device"),
        ("varlen", "cpu", torch.bfloat16, "needs a CUDA device"),
        ("flash_attention_2", "cuda", torch.float32, "float16/bfloat16 only"),
        ("varlen", "cuda", torch.float32, "float16/bfloat16 only"),
        ("flaash", "cpu", torch.float32, "must be one of"),
    ],
)
def test_attention_kernels_are_checked_up_front(attn: str, device: str, dtype: torch.dtype, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_attn_implementation(attn, torch.device(device), dtype)


def test_a_broken_flash_attn_is_refused_at_construction(monkeypatch) -> None:
    monkeypatch.setattr(io_module, "flash_attn_error", lambda: "OSError: undefined symbol: _ZN3c10")
    with pytest.raises(ValueError, match=r"importing it failed \(OSError: undefined symbol"):
        check_attn_implementation("flash_attention_2", torch.device("cuda"), torch.bfloat16)
    assert check_attn_implementation("sdpa", torch.device("cpu"), torch.float32) == "sdpa"
