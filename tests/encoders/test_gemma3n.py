"""Gemma 3n's audio tower: the length rule, the forward and the FLOP rule against HF's own code on the checkpoints'
geometry (3-tap SSCP time kernels; the tiny card of the conformance suite uses 5), the 30 s limit, and the HF quirk
the forward does not copy (a batched call changes a shorter clip's last rows); then the other ``returns=`` modes:
``"lm"`` (the 188 soft tokens the model hands its LM, against ``Gemma3nProcessor`` and ``Gemma3nModel.forward``)
and ``"hidden_states"`` (the conformer's states, against HF's forward with hooks on its own blocks)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import padded_batch, random_padded_batch
from helpers.checkpoints import TINY_GEMMA3N, card_encoder_config, card_extractor
from torch.utils.flop_counter import FlopCounterMode
from transformers import Gemma3nConfig, Gemma3nProcessor
from transformers.models.gemma3n.configuration_gemma3n import Gemma3nAudioConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nModel

from contaudio import ContinuousAudioIO
from contaudio.encoders import find_card, get_family
from contaudio.encoders import gemma3n as gemma3n_module
from contaudio.encoders.gemma3n import (
    SOFT_TOKENS_KEY,
    SOFT_TOKENS_PER_AUDIO,
    WINDOW_FRAMES,
    Gemma3nLM,
    check_geometry,
    gemma3n_hidden_rows,
    gemma3n_lm_rows,
    gemma3n_rows,
    gemma3n_tokenizer,
    gemma3n_window_rows,
    hf_soft_tokens,
)
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
    raising = ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32", returns="tower")
    assert raising.find_length(MAX_LENGTH) == 188
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        raising.find_length(MAX_LENGTH + 513)  # the first sample count that gives a 2998th frame
    windows = ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32",
                                long_clip="windows", returns="tower")  # fmt: skip
    assert windows.find_length(35 * 16000) == 188 + 32  # 30 s, then a 5 s piece of 497 frames
    wav = noise(np.random.default_rng(0), 35 * 16000)
    _, (rows, mel), _ = windows.preprocess((wav, 16000))
    with torch.inference_mode():
        (ours,) = windows.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        hf = FAMILY.oracle(windows.encoder, windows.features.hf_extractor(), wav)
    assert rows == ours.shape[0] == hf.count == 220
    torch.testing.assert_close(ours, hf.rows, atol=ATOL, rtol=0)


def test_tower_returns_the_clips_own_rows_not_the_processors_188() -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32", skip_init_encoder=True,
                           returns="tower")  # fmt: skip
    assert io.find_length(10 * 16000) == 63  # 997 frames; HF's prompt would still hold 188 audio tokens
    assert io.feature_dim() == card_encoder_config(TINY_GEMMA3N)["hidden_size"]
    assert ContinuousAudioIO(encoder_hf_model_tag="google/gemma-3n-E4B-it", weights="random",
                             skip_init_encoder=True, returns="tower").feature_dim() == 1536  # fmt: skip


# ------------------------------------------------------------------------------------------------ returns="lm"
LM_CLIPS = (16000, 5400, 513, 41000, 35 * 16000)  # 1 s, 0.34 s, one frame, 2.6 s, a 35 s clip (two audios)
LM_WIDTH = 48  # the tiny card's model_config: text_config.hidden_size


def lm_io(**kwargs: object) -> ContinuousAudioIO:
    settings = {"weights": "random", "dtype": "float32", "returns": "lm", "long_clip": "windows", **kwargs}
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, **settings)


@pytest.fixture(scope="module")
def lm() -> ContinuousAudioIO:
    return lm_io()


def noisy_batch(
    io: ContinuousAudioIO, samples: tuple[int, ...]
) -> tuple[list[np.ndarray], list, torch.Tensor, torch.Tensor]:
    """Noise clips, their preprocess output, and their mel batch padded with noise-like values (leaks show)."""
    rng = np.random.default_rng(3)
    wavs = [noise(rng, n) for n in samples]
    pre = [io.preprocess((wav, 16000)) for wav in wavs]
    mel, lengths = padded_batch([p[1][1] for p in pre], extra=9, fill=0.5)
    return wavs, pre, mel, lengths


def test_lm_is_the_default_and_counts_the_processors_188_per_audio(lm) -> None:
    """find_length = the placeholders Gemma3nProcessor (card's extractor, tiny tokenizer) writes: 188 per 30 s piece."""
    assert ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, skip_init_encoder=True).returns == "lm"
    assert SOFT_TOKENS_PER_AUDIO == Gemma3nConfig().audio_soft_tokens_per_image == gemma3n_window_rows(WINDOW_FRAMES)
    assert isinstance(lm.family, Gemma3nLM) and lm.feature_dim() == LM_WIDTH
    extractor = lm.features.hf_extractor()
    audios = {513: 1, 16000: 1, MAX_LENGTH: 1, MAX_LENGTH + 512: 1, MAX_LENGTH + 513: 2, 2 * MAX_LENGTH + 9000: 3}
    for n, count in audios.items():  # a tail of <= 512 samples past 30 s gives no frame: no audio of its own
        placeholders = lm.family.hf_placeholders(extractor, np.zeros(n, np.float32))
        assert lm.find_length(n) == placeholders == SOFT_TOKENS_PER_AUDIO * count, n
    ms = torch.arange(0, 7000)
    assert gemma3n_lm_rows(ms).tolist() == [gemma3n_lm_rows(m) for m in ms.tolist()]
    full = ContinuousAudioIO(encoder_hf_model_tag="google/gemma-3n-E4B-it", skip_init_encoder=True)
    assert full.feature_dim() == 2048 and full.find_length(7 * 16000) == SOFT_TOKENS_PER_AUDIO


def test_lm_padded_batch_equals_hfs_forward_on_each_clip_alone(lm) -> None:
    """find_length == preprocess's T == encode_batch rows == HF's rows == its processor's placeholders; values as HF
    hands its LM at those placeholders (Gemma3nModel.forward on the processor's output, each clip alone)."""
    wavs, pre, mel, lengths = noisy_batch(lm, LM_CLIPS)
    extractor = lm.features.hf_extractor()
    with torch.inference_mode():
        outs = lm.encode_batch(mel, lengths)
        for wav, p, out in zip(wavs, pre, outs, strict=True):
            hf = lm.family.oracle(lm.encoder, extractor, wav)
            assert hf.error is None, hf.error
            assert lm.find_length(len(wav)) == p[1][0] == out.shape[0] == hf.count == hf.placeholders, len(wav)
            assert out.shape[1] == LM_WIDTH
            torch.testing.assert_close(out, hf.rows, atol=ATOL, rtol=0, msg=str(len(wav)))
    padding = outs[0][-1]  # a 1 s clip fills 7 of its 188 soft tokens; the rest is the padding embedding
    assert (outs[0][7:] == padding).all() and not (outs[0][6] == padding).all()


def hf_model_soft_tokens(model: torch.nn.Module, wav: np.ndarray) -> torch.Tensor:
    """The full tiny Gemma3nForConditionalGeneration (its LM included) on [boa, 188 audio tokens, eoa] and the
    extractor's output as Gemma3nProcessor passes it: the inputs_embeds its language model receives there."""
    features = card_extractor(TINY_GEMMA3N)(wav, return_tensors="pt")
    config = model.config
    ids = torch.tensor([[config.boa_token_id, *[config.audio_token_id] * SOFT_TOKENS_PER_AUDIO, config.eoa_token_id]])
    seen: dict[str, torch.Tensor] = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        model(input_ids=ids, input_features=features["input_features"],
              input_features_mask=features["input_features_mask"])  # fmt: skip
    finally:
        hook.remove()
    return seen["embeds"][ids == config.audio_token_id]


def test_lm_from_a_saved_checkpoint_equals_the_full_hf_model(family_checkpoints) -> None:
    """Loaded from a checkpoint transformers saved (tower + embed_audio only, strict keys): the rows the whole model,
    its LM built, hands that LM, for clips of a noise-padded batch."""
    directory, model = family_checkpoints["gemma3n"]
    io = ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32", returns="lm")
    assert {key.split(".")[0] for key in io.encoder.state_dict()} == {"audio_tower", "embed_audio"}
    assert io.feature_dim() == model.config.text_config.hidden_size
    wavs, _, mel, lengths = noisy_batch(io, (16000, 5400, 41000))
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, out in zip(wavs, outs, strict=True):
            torch.testing.assert_close(out, hf_model_soft_tokens(model, wav), atol=ATOL, rtol=0)


def hf_one_audio(module: torch.nn.Module, frames: int) -> torch.Tensor:
    """HF's Gemma3nModel.forward on one audio of ``frames`` valid frames and 188 placeholders."""
    prompt = torch.full((1, SOFT_TOKENS_PER_AUDIO), module.config.audio_token_id)
    return hf_soft_tokens(module, torch.randn(1, frames, 128), torch.ones(1, frames, dtype=torch.bool), prompt)


def test_lm_audio_over_188_rows_hf_raises_contaudio_never_cuts(lm) -> None:
    """HF pads an audio's rows up to 188 and raises past them (its processor never passes > 2997 frames); contaudio
    refuses a clip over 30 s (long_clip="raise") or gives each 30 s piece its own 188 soft tokens ("windows")."""
    assert hf_one_audio(lm.encoder, 3008).shape == (SOFT_TOKENS_PER_AUDIO, LM_WIDTH)  # 188 tower rows, no padding
    assert gemma3n_window_rows(3009) == SOFT_TOKENS_PER_AUDIO + 1
    with pytest.raises(ValueError, match="Audio features and audio tokens do not match, tokens: 188, features: 190"):
        hf_one_audio(lm.encoder, 3009)  # HF's padding of -1 rows adds one (expand keeps a -1 size)
    with pytest.raises(RuntimeError):
        hf_one_audio(lm.encoder, 3200)  # 200 rows: a padding of -12 rows fails to expand
    raising = lm_io(skip_init_encoder=True, long_clip="raise")
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        raising.find_length(MAX_LENGTH + 513)
    assert lm.find_length(MAX_LENGTH + 513) == 2 * SOFT_TOKENS_PER_AUDIO


def test_lm_clip_without_a_frame_gives_no_row_and_hf_raises(lm) -> None:
    """<= 512 samples: no frame, so no row (as in "tower"); HF's processor still writes 188 placeholders and its
    model raises on the empty input."""
    wav = noise(np.random.default_rng(0), 512)
    _, (rows, mel), _ = lm.preprocess((wav, 16000))
    assert lm.find_length(512) == rows == mel.shape[0] == 0
    assert lm.encode_batch(torch.zeros(1, 4, 128), torch.tensor([0]))[0].shape == (0, LM_WIDTH)
    hf = lm.family.oracle(lm.encoder, lm.features.hf_extractor(), wav)
    assert hf.rows is None and "RuntimeError" in hf.error and hf.placeholders == SOFT_TOKENS_PER_AUDIO


def test_lm_mismatch_is_seen_on_either_side(lm, monkeypatch) -> None:
    """Values: our padding token off by one, or HF's get_audio_features dropping the tower's last row. Counts: our
    forward without the padding, or HF's processor writing 187 placeholders."""
    from transformers import SiglipImageProcessorPil

    wavs, _, mel, lengths = noisy_batch(lm, (16000, 5400))
    extractor = lm.features.hf_extractor()
    with torch.inference_mode():
        good = lm.encode_batch(mel, lengths)[0]
        hf = lm.family.oracle(lm.encoder, extractor, wavs[0])
        torch.testing.assert_close(good, hf.rows, atol=ATOL, rtol=0)
        with monkeypatch.context() as patch:  # ours: the padding is another audio token's embedding
            patch.setattr(gemma3n_module, "padding_embedding", lambda module: module.embed_audio(
                input_ids=torch.tensor([[module.config.text_config.vocab_size - 2]]))[0, 0])  # fmt: skip
            assert (lm.encode_batch(mel, lengths)[0] - hf.rows).abs().max() > ATOL
        with monkeypatch.context() as patch:  # ours: the soft tokens are not padded up to 188
            patch.setattr(gemma3n_module, "gemma3n_lm_forward", lambda module, m, n: module.embed_audio(
                inputs_embeds=gemma3n_module.gemma3n_forward(module.audio_tower, m, n)))  # fmt: skip
            with pytest.raises(RuntimeError, match="length rule says"):
                lm.encode_batch(mel[:1], lengths[:1])
        get_audio_features = Gemma3nModel.get_audio_features

        def drops_last_row(self, *args, **kwargs):
            out = get_audio_features(self, *args, **kwargs)
            out.audio_mel_mask[:, gemma3n_window_rows(int((~args[1]).sum())) - 1] = True
            return out

        with monkeypatch.context() as patch:  # HF's: its audio features lose the tower's last row
            patch.setattr(Gemma3nModel, "get_audio_features", drops_last_row)
            wrong = lm.family.oracle(lm.encoder, extractor, wavs[0])
            assert wrong.count == good.shape[0] and (good - wrong.rows).abs().max() > ATOL

        def processor_writing(count: int):
            return lambda ext: Gemma3nProcessor(ext, SiglipImageProcessorPil(), gemma3n_tokenizer(),
                                                audio_seq_length=count)  # fmt: skip

        with monkeypatch.context() as patch:  # HF's: its processor writes one placeholder less
            patch.setattr(gemma3n_module, "gemma3n_processor", processor_writing(SOFT_TOKENS_PER_AUDIO - 1))
            wrong = lm.family.oracle(lm.encoder, extractor, wavs[0])
            assert wrong.placeholders == SOFT_TOKENS_PER_AUDIO - 1 != lm.find_length(len(wavs[0])) == wrong.count


def test_lm_needs_the_model_config() -> None:
    family = get_family("gemma3n").view("lm")
    encoder_config = find_card(TINY_GEMMA3N).encoder_config
    with pytest.raises(ValueError, match=r"has no model_config: returns='lm' needs .* use returns='tower'"):
        family.module_config(encoder_config, None)
    with pytest.raises(ValueError, match="audio_soft_tokens_per_image is 100"):
        family.module_config(encoder_config, {**find_card(TINY_GEMMA3N).model_config, SOFT_TOKENS_KEY: 100})


def test_lm_flop_rule_equals_torchs_counter_on_hfs_forward(lm) -> None:
    lengths = (1, 37, 200, 1013)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for m in lengths:
            lm.family.oracle_from_mel(lm.encoder, torch.zeros(m, 128))
    assert lm.family.flops(lm.encoder.config, lengths) == counter.get_total_flops()
    tower = get_family("gemma3n").flops(lm.encoder.config.audio_config, lengths)
    assert lm.family.flops(lm.encoder.config, lengths) > tower


def test_lm_dummy_forward_reaches_embed_audio(lm) -> None:
    out = lm.dummy_forward(torch.zeros(1, dtype=torch.float16))
    assert out.shape == (SOFT_TOKENS_PER_AUDIO, LM_WIDTH) and out.dtype == torch.float16
    out.float().sum().backward()
    assert lm.encoder.embed_audio.embedding_projection.weight.grad is not None
    lm.encoder.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------- returns="hidden_states"
def hidden_io(layers: list[int]) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32",
                             returns="hidden_states", layers=layers, long_clip="windows")  # fmt: skip


@pytest.mark.parametrize("layers", [[0, -1], [1], [2, 0, 1], [0]])
def test_hidden_states_equal_hfs_blocks_on_each_clip_alone(layers: list[int]) -> None:
    """[len(layers), T, hidden_size] per clip, T = ceil(M / 4) per 30 s piece = find_length = preprocess's T, equal to
    HF's SSCP / conformer block outputs (hooks in HF's forward) for the clip alone; only the needed blocks built."""
    io = hidden_io(layers)
    assert len(io.encoder.conformer) == max(*io.layers, 1) and io.feature_dim() == 32  # HiddenStatesView.trim
    wavs, pre, mel, lengths = noisy_batch(io, LM_CLIPS)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, p, out in zip(wavs, pre, outs, strict=True):
            assert out.shape == (len(layers), p[1][0], 32) and io.find_length(len(wav)) == p[1][0]
            assert p[1][0] == gemma3n_hidden_rows(p[1][1].shape[0])
            hf = io.family.oracle(io.encoder, extractor, wav)
            assert hf.error is None and hf.count == p[1][0], hf.describe()
            torch.testing.assert_close(out, hf.rows, atol=ATOL, rtol=0, msg=str(len(wav)))


def test_hidden_states_of_the_trimmed_tower_are_the_whole_towers() -> None:
    whole = ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, weights="random", dtype="float32", returns="tower")
    trimmed = hidden_io([1])
    wav = noise(np.random.default_rng(1), 40000)
    extractor = whole.features.hf_extractor()
    full_view = FAMILY.view("hidden_states", [1], whole.source.encoder_config)
    with torch.inference_mode():
        torch.testing.assert_close(trimmed.family.oracle(trimmed.encoder, extractor, wav).rows,
                                   full_view.oracle(whole.encoder, extractor, wav).rows, atol=0, rtol=0)  # fmt: skip


def test_hfs_output_hidden_states_holds_no_conformer_layer(encoder) -> None:
    """Why the oracle hooks HF's blocks: HF's record table for the audio tower names the text decoder's layer class,
    so output_hidden_states=True gives an empty tuple (transformers 5.25) or the final output alone (5.14). When
    this fails, HF records the blocks: compare with its output_hidden_states instead."""
    with torch.inference_mode():
        out = encoder(torch.randn(1, 100, 128), torch.zeros(1, 100, dtype=torch.bool), output_hidden_states=True)
    assert len(out.hidden_states) <= 1
    assert all(torch.equal(state, out.last_hidden_state) for state in out.hidden_states)


def test_hidden_states_mismatch_is_seen_on_either_side(monkeypatch) -> None:
    """Ours: a block skipped. HF's: the oracle picks another hidden state, or HF's model path drops a row."""
    io = hidden_io([2])
    wavs, _, mel, lengths = noisy_batch(io, (16000, 5400))
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        good = io.encode_batch(mel, lengths)[0]
        hf = io.family.oracle(io.encoder, extractor, wavs[0])
        torch.testing.assert_close(good, hf.rows, atol=ATOL, rtol=0)
        encode = gemma3n_module.encode_hidden_states
        with monkeypatch.context() as patch:  # ours: the stack stops one block short
            patch.setattr(gemma3n_module, "encode_hidden_states",
                          lambda enc, m, f, layers: encode(enc, m, f, tuple(i - 1 for i in layers)))  # fmt: skip
            assert (io.encode_batch(mel, lengths)[0] - hf.rows).abs().max() > ATOL
        pick = gemma3n_module.pick_hidden_states
        with monkeypatch.context() as patch:  # HF's: another entry of the recorded states
            patch.setattr(gemma3n_module, "pick_hidden_states", lambda states, layers, n: pick(states, (1,), n))
            assert (good - io.family.oracle(io.encoder, extractor, wavs[0]).rows).abs().max() > ATOL
        get_audio_features = Gemma3nModel.get_audio_features
        with monkeypatch.context() as patch:  # HF's: its model path loses the clip's last 4 frames (one row)
            patch.setattr(
                Gemma3nModel,
                "get_audio_features",
                lambda host, x, mask, **k: get_audio_features(host, x[:, :-4], mask[:, :-4], **k),
            )
            assert io.family.oracle(io.encoder, extractor, wavs[0]).count == good.shape[1] - 1
