"""Phi-4-multimodal audio tower: its length rule, block layout and FLOP helpers, and the packed forward against
HF's own tower.

The reference is HF's tower on each clip ALONE, as the processor sends one audio (no mask): HF's padded
batch changes every clip but the longest, which is shown here too. Checked against it: clips past one 40 s
block (HF zero-pads the last block and attends to the padding), the subsampling in groups, the eager kernel,
non-trivial normalisation buffers, bf16, gradients, loading a bare tower export, and the refused configs.
What every family shares (loading, oracle, lengths, padded batches, FLOPs vs torch) is in ``test_families.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import clips_and_batch, random_padded_batch
from helpers.checkpoints import (
    INLINE_PROMPT,
    TINY_AUDIO_TOKEN,
    TINY_PHI4_MULTIMODAL,
    assert_holds_tower,
    card_encoder_config,
    perturb_,
    save_tiny_phi4_multimodal,
    writes_placeholders_through,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalProcessor
from transformers.models.phi4_multimodal.configuration_phi4_multimodal import (
    Phi4MultimodalAudioConfig,
    Phi4MultimodalConfig,
)
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import (
    Phi4MultimodalAudioConformerEncoderLayer,
    Phi4MultimodalAudioEmbedding,
    Phi4MultimodalAudioModel,
)

import contaudio.encoders.phi4_multimodal as phi4
from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.phi4_multimodal import BLOCK_ROWS, BlockLayout, packed_forward, phi4_multimodal_rows
from contaudio.features.phi4_multimodal import Phi4MultimodalFeatures

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = get_family("phi4_multimodal")
N_MELS = Phi4MultimodalFeatures().n_mels
ATOL = 1e-5  # fp32, same weights, same kernels: only summation order differs (measured <= 1e-6)
GRAD_TOLERANCE = 1e-10  # float64 gradients, relative to the largest entry (at least 1)
# a few frames, the x8 edges, 1 s, and clips of one block, just past it (a 1-row last block) and of two blocks
LENGTHS = [1, 2, 7, 8, 9, 17, 100, 4000, 4001, 4009, 8000]
ROWS = [phi4_multimodal_rows(m) for m in LENGTHS]


def build(attn_implementation: str = "sdpa", **overrides) -> Phi4MultimodalAudioModel:
    """A random tiny tower with every weight, the GLU biases and the normalisation buffers perturbed."""
    config = Phi4MultimodalAudioConfig(**{**card_encoder_config(TINY_PHI4_MULTIMODAL), **overrides})
    torch.manual_seed(0)
    encoder = Phi4MultimodalAudioModel._from_config(config, attn_implementation=attn_implementation)
    perturb_(encoder, seed=5)
    generator = torch.Generator().manual_seed(6)
    norm = encoder.encoder_embedding
    norm.global_mean.copy_(torch.randn(N_MELS, generator=generator))
    norm.global_invstd.copy_(torch.rand(N_MELS, generator=generator) + 0.5)
    return encoder.eval()


def hf_per_clip(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """HF's tower on each clip alone, one call per clip (no mask, as for one audio): ``[sum rows, D]``."""
    clips = [FAMILY.reference_forward(encoder, mel[i : i + 1, :n], lengths[i : i + 1]) for i, n in
             enumerate(lengths.tolist())]  # fmt: skip
    return torch.cat(clips)


@pytest.fixture(scope="module")
def encoder() -> Phi4MultimodalAudioModel:
    return build()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return random_padded_batch(LENGTHS, n_mels=N_MELS)


@pytest.fixture(scope="module")
def reference(encoder, batch) -> torch.Tensor:
    with torch.inference_mode():
        return hf_per_clip(encoder, *batch)


def test_rule_equals_hfs_token_count_and_tower_length() -> None:
    """``ceil(M / 8)`` is the processor's ``audio_embed_sizes`` for every M, and the tower's output length."""
    ms = torch.arange(0, 20001)
    assert torch.equal(phi4_multimodal_rows(ms), phi4.hf_token_counter()._compute_audio_embed_size(ms))
    for m in (0, 1, 7, 8, 9, 4000, 4001, 20000):
        assert phi4_multimodal_rows(m) == int(phi4_multimodal_rows(torch.tensor(m)))
    encoder = build()
    with torch.inference_mode():
        for m in range(1, 42):
            assert encoder(torch.zeros(1, m, N_MELS), None).shape[1] == phi4_multimodal_rows(m), m


def test_block_layout_is_hfs_unfolding() -> None:
    """Blocks of 500 rows per clip, the last zero-padded to 500 when a clip has more than one, as HF's forward
    unfolds a clip alone (``unfold_tensor`` after padding to a multiple of ``max_seq_len``)."""
    layout = BlockLayout.from_rows(torch.tensor(ROWS), "cpu")
    assert layout.computed.tolist() == [r if r <= BLOCK_ROWS else -(-r // BLOCK_ROWS) * BLOCK_ROWS for r in ROWS]
    assert layout.block_rows.tolist() == [1, 1, 1, 1, 2, 3, 13] + [BLOCK_ROWS] * 7  # 500, 501, 502, 1000 rows
    assert len(layout.keep) == sum(ROWS) and int(layout.keep[-1]) == int(layout.computed.sum()) - 1


def test_packed_matches_hf_one_clip_at_a_time(encoder, batch, reference) -> None:
    """One pass for the whole noise-padded batch equals HF's tower on each clip alone, clips past 40 s included."""
    with torch.inference_mode():
        ours = packed_forward(encoder, *batch)
    assert ours.shape == reference.shape == (sum(ROWS), encoder.config.hidden_size)
    assert (ours - reference).abs().max() <= ATOL


def test_eager_kernel_matches_hf_eager(batch) -> None:
    encoder = build("eager")
    assert phi4.attention_kernel(encoder.config, torch.device("cpu")) == "eager"
    with torch.inference_mode():
        assert (packed_forward(encoder, *batch) - hf_per_clip(encoder, *batch)).abs().max() <= ATOL


def test_subsampling_in_groups_changes_nothing(monkeypatch, encoder, batch, reference) -> None:
    monkeypatch.setitem(phi4.FRAMES_PER_CONV_CALL, "cpu", 64)  # a group per few short clips, long clips alone
    assert len(phi4.conv_groups(batch[1], 64)) > 5
    with torch.inference_mode():
        assert (packed_forward(encoder, *batch) - reference).abs().max() <= ATOL


@pytest.mark.parametrize("grid_blocks", [phi4.GRID_BLOCKS, 3])
def test_grid_kernel_matches_hf(monkeypatch, encoder, batch, reference, grid_blocks: int) -> None:
    """The CUDA path (forced on CPU): blocks padded into grids of up to ``grid_blocks``, one SDPA call per grid."""
    monkeypatch.setattr(phi4, "attention_kernel", lambda *_: "grid")
    monkeypatch.setattr(phi4, "GRID_BLOCKS", grid_blocks)
    blocks = len(BlockLayout.from_rows(torch.tensor(ROWS), "cpu").block_rows)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    with torch.inference_mode():
        ours = packed_forward(encoder, *batch)
    assert len(calls) == encoder.config.num_blocks * -(-blocks // grid_blocks)
    assert (ours - reference).abs().max() <= ATOL


def test_hf_batched_call_differs_from_each_clip_alone_ours_does_not(encoder) -> None:
    """Why the reference is one clip per call: in HF's padded batch (features past a clip's end are the
    extractor's 0, the processor's mask given) the shorter clip reads padding in the conv subsampling and
    attends to padding rows (the mask is added to the logits as 0/1, it masks nothing), even at a multiple
    of 8 frames. The longest clip of the batch is its one-clip result."""
    lengths = torch.tensor([200, 64, 61])
    mel, _ = random_padded_batch(lengths.tolist(), extra=0, n_mels=N_MELS)
    mel = torch.where((torch.arange(200) < lengths[:, None])[:, :, None], mel, 0.0)
    rows = phi4_multimodal_rows(lengths).tolist()
    with torch.inference_mode():
        alone = hf_per_clip(encoder, mel, lengths).split(rows)
        hf_batched = FAMILY.reference_forward(encoder, mel, lengths).split(rows)  # one call, the processor's mask
        ours = packed_forward(encoder, mel, lengths).split(rows)
    torch.testing.assert_close(hf_batched[0], alone[0], atol=ATOL, rtol=0)
    for i in (1, 2):
        assert (hf_batched[i] - alone[i]).abs().max() > 100 * ATOL
    for ours_clip, alone_clip in zip(ours, alone, strict=True):
        torch.testing.assert_close(ours_clip, alone_clip, atol=ATOL, rtol=0)


def test_long_clip_rows_attend_to_hfs_block_padding(encoder) -> None:
    """Past 500 rows HF's one-clip call zero-pads the last block and, its mask being all True, attends to the
    padding: the last block's rows differ from a forward that masks it (here: HF given the mask, which lowers the
    padding's logits by 1). Earlier blocks are identical. Ours reproduces the one-clip call (above)."""
    length = 4009  # 502 rows: a full block, then 2 rows and 498 padding rows
    mel, _ = random_padded_batch([length], extra=0, n_mels=N_MELS)
    with torch.inference_mode():
        unmasked = encoder(mel, None)[0]
        masked = encoder(mel, torch.ones(1, length, dtype=torch.bool))[0]
    torch.testing.assert_close(unmasked[:BLOCK_ROWS], masked[:BLOCK_ROWS], atol=ATOL, rtol=0)
    assert (unmasked[BLOCK_ROWS:] - masked[BLOCK_ROWS:]).abs().max() > 1000 * ATOL


@pytest.mark.parametrize(("overrides", "message"), [({"chunk_size": 18}, "chunk_size=18"),
                                                    ({"time_reduction": 4}, "time_reduction=4")])  # fmt: skip
def test_other_configs_are_refused(overrides: dict, message: str, batch) -> None:
    """Streaming chunk masks and another subsampling factor would break the forward or the rule: both raise."""
    encoder = build(**overrides)
    for forward in (packed_forward, FAMILY.forward, FAMILY.reference_forward):
        with pytest.raises(ValueError, match=message):
            forward(encoder, *batch)


def test_bf16_error_equals_hfs(encoder, batch, reference) -> None:
    """In bf16 ours runs HF's arithmetic: the same error against the fp32 result, clip by clip."""
    low = copy.deepcopy(encoder).to(torch.bfloat16)
    mel, lengths = batch
    with torch.inference_mode():
        ours = packed_forward(low, mel.bfloat16(), lengths).float()
        theirs = hf_per_clip(low, mel.bfloat16(), lengths).float()
    ours_error = [float((o - r).abs().max()) for o, r in zip(ours.split(ROWS), reference.split(ROWS), strict=True)]
    hf_error = [float((t - r).abs().max()) for t, r in zip(theirs.split(ROWS), reference.split(ROWS), strict=True)]
    assert 0 < max(hf_error) < 0.1
    assert ours_error == pytest.approx(hf_error, rel=0.1, abs=1e-3)


def test_gradients_equal_hfs() -> None:
    """float64: the packed forward's weight gradients are HF's (summed over clips alone)."""
    encoder = build().double()
    mel, lengths = random_padded_batch([9, 100, 37], n_mels=N_MELS)
    mel = mel.double()
    ours = copy.deepcopy(encoder)
    packed_forward(ours, mel, lengths).square().sum().backward()
    hf_per_clip(encoder, mel, lengths).square().sum().backward()
    for (name, p), q in zip(encoder.named_parameters(), ours.parameters(), strict=True):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        scale = max(float(p.grad.abs().max()), 1.0)
        assert float((p.grad - q.grad).abs().max()) <= GRAD_TOLERANCE * scale, name


def test_loads_a_bare_tower_export(tmp_path) -> None:
    """A standalone ``Phi4MultimodalAudioModel`` checkpoint (model_type phi4_multimodal_audio, no prefix) loads as
    ``returns="tower"``; it holds no speech projection, so ``"lm"`` (the default) is refused, saying what to pass."""
    encoder = build()
    encoder.save_pretrained(tmp_path)
    Phi4MultimodalFeatures().hf_extractor().save_pretrained(tmp_path)
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32", returns="tower")
    assert io.family is FAMILY and io.features == Phi4MultimodalFeatures()
    assert_holds_tower(io, encoder.state_dict())
    with pytest.raises(ValueError, match=r"model_type 'phi4_multimodal_audio'.*use returns='tower'"):
        ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")


# ------------------------------------------------------------------------------------------------ returns="lm"
LM_ATOL = 1e-5  # fp32: the same tower and projection weights, only the tower's kernels and summation order differ
# 1 s, past a x8 edge, the shortest clip (1 frame), 9 frames (2 rows), 44 s (550 rows: two 40 s blocks)
CLIP_SAMPLES = (16000, 70001, 401, 1680, 704000)
LM_WIDTH = 48  # the tiny card's model_config hidden_size (the tower's is 32)


def tiny_io(**kwargs) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_PHI4_MULTIMODAL, weights="random", dtype="float32", **kwargs)


@pytest.fixture(scope="module")
def lm() -> tuple[ContinuousAudioIO, list[np.ndarray], list, torch.Tensor, torch.Tensor]:
    io = tiny_io(returns="lm")
    return io, *clips_and_batch(io, CLIP_SAMPLES)


def test_lm_rule_is_the_extractors_embed_size() -> None:
    """The processor writes ``audio_embed_sizes`` placeholders, counted by the extractor's own helper: the rule is
    that helper for every M (and the tower's rows: downsample_rate 1)."""
    ms = torch.arange(0, 20001)
    assert torch.equal(phi4.phi4_multimodal_lm_rows(ms), phi4.hf_token_counter()._compute_audio_embed_size(ms))
    assert torch.equal(phi4.phi4_multimodal_lm_rows(ms), phi4_multimodal_rows(ms))


def test_lm_rows_are_hfs_embedding_at_the_processors_placeholders(lm) -> None:
    """Per clip of a noise-padded batch: find_length == preprocess's T == encode_batch's rows == the placeholders
    Phi4MultimodalProcessor writes for the clip alone == the rows of HF's Phi4MultimodalAudioEmbedding.forward, whose
    values ours equal (clips past one 40 s block included)."""
    io, wavs, pre, mel, lengths = lm
    assert isinstance(io.family, phi4.Phi4MultimodalLM) and io.returns == "lm"
    assert isinstance(io.encoder, phi4.Phi4MultimodalSpeechEmbedding) and io.feature_dim() == LM_WIDTH
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, p, out in zip(wavs, pre, outs, strict=True):
            oracle = io.family.oracle(io.encoder, extractor, wav)
            assert oracle.error is None, oracle.error
            assert io.find_length(len(wav)) == p[1][0] == out.shape[0] == oracle.count == oracle.placeholders
            assert out.shape[1] == LM_WIDTH
            torch.testing.assert_close(out, oracle.rows, rtol=0, atol=LM_ATOL)
    assert max(p[1][0] for p in pre) > BLOCK_ROWS


def without_gelu(module: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return module.drop(module.down_proj_for_speech(module.up_proj_for_speech(rows)))


def test_lm_our_faults_are_seen(monkeypatch, lm) -> None:
    """Our side: a projection without its GELU changes the values; a rule one row off misses the placeholders."""
    io, wavs, _, mel, lengths = lm
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        oracle = io.family.oracle(io.encoder, extractor, wavs[0])
        with monkeypatch.context() as patch:
            patch.setattr(phi4, "speech_projection", without_gelu)
            assert (io.encode_batch(mel, lengths)[0] - oracle.rows).abs().max() > 100 * LM_ATOL
        with monkeypatch.context() as patch:
            patch.setattr(phi4.Phi4MultimodalLM, "rows", staticmethod(lambda m: phi4.phi4_multimodal_lm_rows(m) + 1))
            assert io.find_length(len(wavs[0])) == oracle.placeholders + 1


def test_lm_hfs_faults_are_seen(monkeypatch, lm) -> None:
    """HF's side: its embedding answering other values, keeping one row too few (HF's own index_put then raises), or
    its processor writing one placeholder more: each shows in the oracle's answer."""
    io, wavs, _, mel, lengths = lm
    extractor = io.features.hf_extractor()
    embed = Phi4MultimodalAudioEmbedding.forward
    with torch.inference_mode():
        ours = io.encode_batch(mel, lengths)[0]
        with monkeypatch.context() as patch:
            patch.setattr(Phi4MultimodalAudioEmbedding, "forward", lambda *a, **k: embed(*a, **k) * 1.01)
            assert (io.family.oracle(io.encoder, extractor, wavs[0]).rows - ours).abs().max() > 100 * LM_ATOL
        with monkeypatch.context() as patch:
            one_row_short = lambda *a, audio_embed_sizes, **k: embed(*a, audio_embed_sizes=audio_embed_sizes - 1, **k)  # noqa: E731
            patch.setattr(Phi4MultimodalAudioEmbedding, "forward", one_row_short)
            assert "RuntimeError" in io.family.oracle(io.encoder, extractor, wavs[0]).error
        if not writes_placeholders_through(Phi4MultimodalProcessor):
            pytest.skip(INLINE_PROMPT)
        with monkeypatch.context() as patch:
            replace = Phi4MultimodalProcessor.replace_audio_token
            patch.setattr(Phi4MultimodalProcessor, "replace_audio_token",
                          lambda self, *a, **k: replace(self, *a, **k) + self.audio_token)  # fmt: skip
            answer = io.family.oracle(io.encoder, extractor, wavs[0])
            assert answer.placeholders == answer.count + 1 == ours.shape[0] + 1


def test_processor_counts_with_the_extractors_helper(monkeypatch) -> None:
    """The processor's placeholders come from the extractor's ``_compute_audio_embed_size`` (through its
    ``audio_embed_sizes``): changing that helper changes the count."""
    extractor = Phi4MultimodalFeatures().hf_extractor()
    wav = noise(np.random.default_rng(2), 16000)
    assert phi4.hf_placeholder_count(extractor, wav) == phi4_multimodal_rows(Phi4MultimodalFeatures().frames(16000))
    helper = Phi4MultimodalFeatureExtractor._compute_audio_embed_size
    monkeypatch.setattr(Phi4MultimodalFeatureExtractor, "_compute_audio_embed_size", lambda s, f: helper(s, f) + 1)
    assert phi4.hf_placeholder_count(extractor, wav) == phi4_multimodal_rows(Phi4MultimodalFeatures().frames(16000)) + 1


def test_lm_oracle_is_the_full_models_embedding(tmp_path) -> None:
    """From a whole Phi4MultimodalForCausalLM checkpoint saved by transformers (sharded): only the tower and the speech
    projection are read, and the oracle and encode_batch equal the full model's input embeddings at the audio tokens
    (HF's real model forward, on the features its extractor gives one audio)."""
    model = save_tiny_phi4_multimodal(tmp_path)
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    assert io.returns == "lm" and io.feature_dim() == model.config.hidden_size
    speech = {k: v for k, v in model.model.embed_tokens_extend.audio_embed.state_dict().items()
              if k.startswith(phi4.SPEECH_PARTS)}  # fmt: skip
    assert_holds_tower(io, speech)
    extractor = io.features.hf_extractor()
    captured = {}
    hook = model.model.embed_tokens_extend.register_forward_hook(lambda m, a, out: captured.update(x=out))
    try:
        with torch.inference_mode():
            for n in (16000, 1680, 704000):
                wav = noise(np.random.default_rng(n), n)
                out = extractor([wav], sampling_rate=16000, return_tensors="pt")
                tokens = int(out["audio_embed_sizes"][0])
                ids = torch.tensor([[0] + [TINY_AUDIO_TOKEN] * tokens + [0]])
                model(input_ids=ids, audio_input_features=out["audio_input_features"],
                      audio_embed_sizes=out["audio_embed_sizes"])  # fmt: skip
                reference = captured["x"][ids == TINY_AUDIO_TOKEN]
                oracle = io.family.oracle(io.encoder, extractor, wav)
                assert oracle.placeholders == oracle.count == tokens
                torch.testing.assert_close(oracle.rows, reference, rtol=0, atol=1e-6)
                mel = torch.from_numpy(io.preprocess((wav, 16000))[1][1])[None]
                ours = io.encode_batch(mel, torch.tensor([mel.shape[1]]))[0]
                torch.testing.assert_close(ours, reference, rtol=0, atol=LM_ATOL)
    finally:
        hook.remove()


def test_lm_loads_a_phi4_multimodal_model_saved_alone(tmp_path) -> None:
    """The other layout: a Phi4MultimodalModel saved on its own keeps the audio embedding under
    ``embed_tokens_extend.audio_embed.`` (no ``model.``); the same speech tensors load from it."""
    model = save_tiny_phi4_multimodal(tmp_path / "whole").model
    model.save_pretrained(tmp_path / "alone")
    Phi4MultimodalFeatures().hf_extractor().save_pretrained(tmp_path / "alone")
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path / "alone"), weights="pretrained", dtype="float32")
    speech = {k: v for k, v in model.embed_tokens_extend.audio_embed.state_dict().items()
              if k.startswith(phi4.SPEECH_PARTS)}  # fmt: skip
    assert_holds_tower(io, speech)


@pytest.mark.parametrize("card", [TINY_PHI4_MULTIMODAL, "microsoft/Phi-4-multimodal-instruct"])
def test_speech_embedding_is_hfs_audio_embedding_less_the_vision_projections(card: str) -> None:
    """The module built for "lm" has exactly the tensors (names and shapes) of HF's own Phi4MultimodalAudioEmbedding
    built from the same config, less the vision-speech projections; the LM width is the card's model_config."""
    io = ContinuousAudioIO(encoder_hf_model_tag=card, weights="random", skip_init_encoder=True)
    config = Phi4MultimodalConfig.from_dict(io.family.module_config(io.source.encoder_config, io.source.model_config))
    with torch.device("meta"):
        ours = phi4.Phi4MultimodalSpeechEmbedding(config).state_dict()
        hf = Phi4MultimodalAudioEmbedding(config).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in hf.items() if "vision_speech" not in k}
    tower = ContinuousAudioIO(encoder_hf_model_tag=card, weights="random", skip_init_encoder=True, returns="tower")
    assert io.feature_dim() == io.source.model_config["hidden_size"] == config.hidden_size
    assert tower.feature_dim() == io.source.encoder_config["hidden_size"]
    if card != TINY_PHI4_MULTIMODAL:
        assert (io.feature_dim(), tower.feature_dim()) == (3072, 1024)


def test_lm_without_a_model_config_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no model_config: returns='lm' needs.*use returns='tower'"):
        FAMILY.view("lm").module_config(card_encoder_config(TINY_PHI4_MULTIMODAL), None)


def test_lm_refuses_a_downsample_rate_hfs_speech_path_cannot_run(lm) -> None:
    io, _, _, mel, lengths = lm
    module = copy.deepcopy(io.encoder)
    module.config.audio_config.downsample_rate = 2
    for forward in (io.family.forward, io.family.reference_forward):
        with pytest.raises(ValueError, match="downsample_rate=2"):
            forward(module, mel, lengths)


def test_lm_flop_rule_equals_torchs_counter_on_hfs_path() -> None:
    """Tower + speech projection, one clip per call, as torch counts HF's Phi4MultimodalAudioEmbedding.forward."""
    io = tiny_io(returns="lm", attn_implementation="eager")
    assert phi4.attention_kernel(io.encoder.encoder.config, torch.device("cpu")) == "eager"  # countable matmuls
    lengths = (37, 200, 4100)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for m in lengths:
            io.family.reference_forward(io.encoder, torch.zeros(1, m, N_MELS), torch.tensor([m]))
    assert io.family.flops(io.encoder.config, lengths) == counter.get_total_flops()
    tower = FAMILY.flops(io.encoder.encoder.config, lengths)
    rows = sum(phi4_multimodal_rows(m) for m in lengths)
    assert io.family.flops(io.encoder.config, lengths) - tower == 2 * rows * (32 * LM_WIDTH + LM_WIDTH * LM_WIDTH)


def test_lm_dummy_forward_reaches_the_projection() -> None:
    io = tiny_io(returns="lm")
    out = io.dummy_forward(torch.zeros(1, dtype=torch.float64))
    assert out.shape == (1, LM_WIDTH) and out.dtype == torch.float64
    out.sum().backward()
    assert all(p.grad is not None for p in io.encoder.parameters())  # every weight in the graph
    assert io.encoder.down_proj_for_speech.weight.grad.abs().sum() > 0  # the projection really computes it
    assert io.encoder.encoder.encoders[0].self_attn.v_proj.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- returns="hidden_states"
def hf_layer_inputs(encoder: torch.nn.Module, features: torch.Tensor) -> list[torch.Tensor]:
    """Each HF conformer layer's input (forward pre-hooks), blocks back in a row and cut to the clip's rows, and the
    tower's output: HF's own view of the stack, independent of which modules the oracle hooks."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for layer in encoder.encoders]
    try:
        output = encoder(features, None)
    finally:
        for hook in hooks:
            hook.remove()
    return [s.reshape(1, -1, s.shape[-1])[:, : output.shape[1]][0] for s in seen] + [output[0]]


@pytest.mark.parametrize("layers", [[0, -1], [1], [2, 0, 1]])
def test_hidden_states_equal_hfs_per_layer(layers: list[int]) -> None:
    """Per clip [len(layers), T, hidden_size], T = find_length = preprocess's T, each clip of a noise-padded batch
    equal to HF's hidden states of the clip alone (clips past one 40 s block included); only the layers up to the
    deepest one are built."""
    io = tiny_io(returns="hidden_states", layers=layers)
    assert len(io.encoder.encoders) == max(io.layers) and io.feature_dim() == 32
    wavs, pre, mel, lengths = clips_and_batch(io, CLIP_SAMPLES)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, p, out in zip(wavs, pre, outs, strict=True):
            oracle = io.family.oracle(io.encoder, extractor, wav)
            assert oracle.error is None, oracle.error
            assert out.shape == (len(layers), p[1][0], 32) and oracle.count == io.find_length(len(wav)) == p[1][0]
            torch.testing.assert_close(out, oracle.rows, rtol=0, atol=ATOL)


@pytest.mark.parametrize("frames", [100, 4009])
def test_hidden_states_are_hfs_layer_inputs_and_tower_output(encoder, frames: int) -> None:
    """The oracle's hidden state 0 is the first layer's input, i its output (= layer i + 1's input), the last the
    tower's output, as HF runs them (a 4009-frame clip: two 500-row blocks, HF's second zero-padded)."""
    mel, _ = random_padded_batch([frames], extra=0, n_mels=N_MELS)
    with torch.inference_mode():
        states = FAMILY.hf_hidden_states(encoder, mel, torch.tensor([frames]), (0, 1, 2))
        expected = hf_layer_inputs(encoder, mel)
    assert states.shape == (3, phi4_multimodal_rows(frames), 32)
    for state, reference in zip(states, expected, strict=True):
        torch.testing.assert_close(state, reference, rtol=0, atol=0)


def test_hidden_states_mismatch_is_seen(monkeypatch) -> None:
    """Our side skipping a layer, and HF's layer answering otherwise, each make the comparison fail."""
    io = tiny_io(returns="hidden_states", layers=[1])
    wavs, _, mel, lengths = clips_and_batch(io, CLIP_SAMPLES)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        good = io.encode_batch(mel, lengths)[0]
        oracle = io.family.oracle(io.encoder, extractor, wavs[0])
        torch.testing.assert_close(good, oracle.rows, rtol=0, atol=ATOL)
        with monkeypatch.context() as patch:  # ours: the layer never runs
            patch.setattr(phi4, "conformer_layer", lambda layer, hidden, *a: hidden)
            assert (io.encode_batch(mel, lengths)[0] - oracle.rows).abs().max() > 100 * ATOL
        with monkeypatch.context() as patch:  # HF's: its layer gives other values
            layer_forward = Phi4MultimodalAudioConformerEncoderLayer.forward
            patch.setattr(Phi4MultimodalAudioConformerEncoderLayer, "forward", lambda *a: layer_forward(*a) * 1.01)
            assert (io.family.oracle(io.encoder, extractor, wavs[0]).rows - good).abs().max() > 100 * ATOL


def test_hidden_states_dummy_forward_and_layer_zero() -> None:
    """layers=[0] runs no layer (one stays built, as buffers, for HF's side): the subsampled rows."""
    io = tiny_io(returns="hidden_states", layers=[0])
    assert len(io.encoder.encoders) == 1 and not list(io.encoder.encoders.parameters())
    out = io.dummy_forward(torch.zeros(1, dtype=torch.float16))
    assert out.shape == (1, 1, 32) and out.dtype == torch.float16
    assert io.encode_batch(torch.zeros(1, 4, N_MELS), torch.tensor([0]))[0].shape == (1, 0, 32)
