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

import pytest
import torch
from helpers.batches import random_padded_batch
from helpers.checkpoints import TINY_PHI4_MULTIMODAL, assert_holds_tower, card_encoder_config, perturb_
from transformers.models.phi4_multimodal.configuration_phi4_multimodal import Phi4MultimodalAudioConfig
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import Phi4MultimodalAudioModel

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
    """A standalone ``Phi4MultimodalAudioModel`` checkpoint (model_type phi4_multimodal_audio, no prefix) loads too."""
    encoder = build()
    encoder.save_pretrained(tmp_path)
    Phi4MultimodalFeatures().hf_extractor().save_pretrained(tmp_path)
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    assert io.family is FAMILY and io.features == Phi4MultimodalFeatures()
    assert_holds_tower(io, encoder.state_dict())
