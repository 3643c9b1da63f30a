"""Gemma 3n's audio tower: the length rule, the forward and the FLOP rule against HF's own code on the checkpoints'
geometry (3-tap SSCP time kernels; the tiny card of the conformance suite uses 5), the 30 s limit, and the HF quirk
the forward does not copy (a batched call changes a shorter clip's last rows)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import random_padded_batch
from helpers.checkpoints import TINY_GEMMA3N, card_encoder_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import Gemma3nConfig, Gemma3nProcessor
from transformers.models.gemma3n.configuration_gemma3n import Gemma3nAudioConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.gemma3n import WINDOW_FRAMES, check_geometry, gemma3n_rows, gemma3n_window_rows
from contaudio.encoders.loading import perturb_init_
from contaudio.encoders.windows import ClipTooLongError
from contaudio.features.gemma3n import MAX_LENGTH, Gemma3nLogMel

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = get_family("gemma3n")
ATOL = 1e-5  # float32, same weights: HF's modules on other batch shapes


def real_geometry_encoder(**changes: object) -> Gemma3nAudioEncoder:
    """The tiny card's widths with the checkpoints' 3-tap SSCP kernels, random weights that show leaks."""
    config = {**card_encoder_config(TINY_GEMMA3N), "sscp_conv_kernel_size": [[3, 3], [3, 3]], **changes}
    encoder = Gemma3nAudioEncoder(Gemma3nAudioConfig(**config))
    perturb_init_(encoder, seed=0)
    return encoder.eval()


@pytest.fixture(scope="module")
def encoder() -> Gemma3nAudioEncoder:
    return real_geometry_encoder()


def mels(*lengths: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(m, 128, generator=generator) for m in lengths]


def test_rows_rule_is_integer_arithmetic_for_ints_and_tensors() -> None:
    ms = torch.arange(0, 7000)
    by_tensor = gemma3n_rows(ms)
    assert by_tensor.dtype == torch.long
    assert by_tensor.tolist() == [gemma3n_rows(m) for m in ms.tolist()]
    assert all(type(gemma3n_rows(m)) is int for m in (0, 1, 2997, 6000))
    assert gemma3n_window_rows(ms[:WINDOW_FRAMES]).tolist() == (-(-ms[:WINDOW_FRAMES] // 16)).tolist()  # ceil(M/16)


def test_one_30s_clip_is_the_processors_188_soft_tokens() -> None:
    """2997 frames = what the processor keeps of 30 s (HF's own extractor says so) = 188 rows = its audio_seq_length."""
    extractor = Gemma3nLogMel().hf_extractor()
    for num_samples in (MAX_LENGTH, MAX_LENGTH + 16000):  # HF cuts the longer one at 30 s
        assert int(extractor(np.zeros(num_samples, np.float32))["input_features_mask"][0].sum()) == WINDOW_FRAMES
    audio_seq_length = inspect.signature(Gemma3nProcessor.__init__).parameters["audio_seq_length"].default
    assert gemma3n_rows(WINDOW_FRAMES) == audio_seq_length == Gemma3nConfig().audio_soft_tokens_per_image == 188


def test_rows_rule_equals_hfs_output_mask_for_every_length(encoder) -> None:
    with torch.inference_mode():
        for m in range(1, 121):
            hf = encoder(torch.zeros(1, m, 128), torch.zeros(1, m, dtype=torch.bool))
            assert int((~hf.audio_mel_mask).sum()) == hf.last_hidden_state.shape[1] == gemma3n_rows(m), m


def test_padded_batch_equals_each_clip_alone_and_hf_alone(encoder) -> None:
    """Garbage past each clip's end, a two-window clip (35 s), clips of 1 and 33 frames: every row as HF alone."""
    lengths = [33, 1, 200, 97, WINDOW_FRAMES + 500, 48]
    batch, lengths_t = random_padded_batch(lengths)
    with torch.inference_mode():
        flat = FAMILY.forward(encoder, batch, lengths_t)
        clips = flat.split([gemma3n_rows(m) for m in lengths])
        for i, (m, ours) in enumerate(zip(lengths, clips, strict=True)):
            alone = FAMILY.forward(encoder, batch[i : i + 1, :m], torch.tensor([m]))
            hf = FAMILY.oracle_from_mel(encoder, batch[i, :m])
            assert hf.error is None and hf.rows.shape == ours.shape == alone.shape, m
            torch.testing.assert_close(ours, alone, atol=ATOL, rtol=0, msg=str(m))
            torch.testing.assert_close(ours, hf.rows, atol=ATOL, rtol=0, msg=str(m))


def test_hfs_batched_processor_call_gives_a_shorter_clip_other_frames_and_rows(encoder) -> None:
    """Next to a longer clip, the processor gives a clip ``ceil(N / 160)`` frames (every frame that starts inside it,
    its end read from the batch's zero padding) where alone it gives ``(ceil(N / 128) * 128 - 513) // 160 + 1``; HF's
    model then encodes the extra frames (here: one row more). contaudio gives every clip what the processor and
    model give it alone, in any batch."""
    extractor = Gemma3nLogMel().hf_extractor()
    rng = np.random.default_rng(0)
    short, long = noise(rng, 5400), noise(rng, 16000)
    batch = extractor([short, long], return_tensors="pt")
    features, batch_frames = batch["input_features"], batch["input_features_mask"].sum(-1)
    alone_frames = Gemma3nLogMel().frames(len(short))
    assert int(batch_frames[0]) == -(-len(short) // 160) == 34 and alone_frames == 32
    with torch.inference_mode():
        hf_batched = FAMILY.hf_encode(encoder, features, batch_frames)
        hf_alone = FAMILY.oracle(encoder, extractor, short).rows
        ours = FAMILY.forward(encoder, features, torch.tensor([alone_frames, int(batch_frames[1])]))
    assert hf_batched.shape[0] - gemma3n_rows(int(batch_frames[1])) == 3 != hf_alone.shape[0] == 2
    torch.testing.assert_close(ours[:2], hf_alone, atol=ATOL, rtol=0)


def test_flop_rule_equals_torchs_counter_on_hfs_forward(encoder) -> None:
    lengths = (1, 37, 200, 1013)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for m in lengths:
            FAMILY.reference_forward(encoder, torch.zeros(1, m, 128), torch.tensor([m]))
    assert FAMILY.flops(encoder.config, lengths) == counter.get_total_flops()
    assert FAMILY.flops(encoder.config, [WINDOW_FRAMES + 5]) == FAMILY.flops(encoder.config, [WINDOW_FRAMES, 5])


def test_length_rule_geometry_is_checked() -> None:
    check_geometry(real_geometry_encoder())
    for changes in ({"conf_reduction_factor": 2}, {"sscp_conv_stride_size": [[2, 2], [1, 2]]}):
        with pytest.raises(ValueError, match="length rule"):
            check_geometry(real_geometry_encoder(**changes))


def test_30s_limit_raises_or_encodes_30s_pieces_never_cuts() -> None:
    raising = ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32")
    assert raising.find_length(MAX_LENGTH) == 188
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        raising.find_length(MAX_LENGTH + 513)  # the first sample count that gives a 2998th frame
    windows = ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32",
                                long_clip="windows")  # fmt: skip
    assert windows.find_length(35 * 16000) == 188 + 32  # 30 s, then a 5 s piece of 497 frames
    wav = noise(np.random.default_rng(0), 35 * 16000)
    _, (rows, mel), _ = windows.preprocess((wav, 16000))
    with torch.inference_mode():
        (ours,) = windows.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        hf = FAMILY.oracle(windows.encoder, windows.features.hf_extractor(), wav)
    assert rows == ours.shape[0] == hf.count == 220
    torch.testing.assert_close(ours, hf.rows, atol=ATOL, rtol=0)


def test_returns_the_clips_own_rows_not_the_processors_188() -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32", skip_init_encoder=True)
    assert io.find_length(10 * 16000) == 63  # 997 frames; HF's prompt would still hold 188 audio tokens
    assert io.feature_dim() == card_encoder_config(TINY_GEMMA3N)["hidden_size"]
    assert ContinuousAudioIO(encoder_hf_model_tag="google/gemma-3n-E4B-it", weights="random",
                             skip_init_encoder=True).feature_dim() == 1536  # fmt: skip
