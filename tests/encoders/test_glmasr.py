"""GLM-ASR: 50 Hz rows per 30 s window, windows as its processor cuts them, the processor's 21-window limit
honoured by a clear error; clips longer than 30 s equal GlmAsrProcessor + HF's model path, and that check
fails when either side breaks; the prompt's placeholders are the 4-row merge of the tower's rows.

Modes: ``"lm"`` (the default) is HF's ``pooler_output`` (4-row merge + projector) counted as the processor's
placeholders; ``"hidden_states"`` is HF's ``output_hidden_states`` (its last entry after the final norm); each is
checked against HF's whole model saved by transformers, with faults injected on both sides."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import window_modes as modes
from helpers.checkpoints import TINY_GLMASR, perturb_, relayout, rename_prefixes
from helpers.faults import moved_hidden_states
from transformers.models.glmasr.configuration_glmasr import GlmAsrConfig
from transformers.models.glmasr.modeling_glmasr import GlmAsrEncoder, GlmAsrModel
from transformers.models.glmasr.processing_glmasr import GlmAsrProcessor

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.glmasr import (
    MERGE_FACTOR,
    GlmAsrLM,
    check_merge,
    glm_asr_lm_rows,
    glm_asr_window_lm_rows,
)
from contaudio.encoders.oracle import select_rows
from contaudio.encoders.windows import ClipTooLongError, placeholder_count

FAMILY = get_family("glmasr")
SR = 16000
WINDOW_SAMPLES = 30 * SR  # the processor's window: feature_extractor.chunk_length seconds
MAX_SAMPLES = 21 * WINDOW_SAMPLES  # GlmAsrProcessor(max_audio_len=655) keeps 21 whole windows
PERTURB_SEED = 4
HUB_KEYS = {"model.audio_tower.": "audio_tower.", "model.multi_modal_projector.": "multi_modal_projector.",
            "model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_merged_by_four_equal_the_processors_token_count_per_window() -> None:
    """Four tower rows make one LM row: the processor's count is the merge of our rows, window by window."""
    frames = torch.tensor([4, 100, 2999, 3000, 6000])
    tokens = GlmAsrProcessor._get_audio_token_length(None, frames)
    merged = torch.tensor(
        [sum((r - 4) // 4 + 1 for r in [1500] * (m // 3000) + [FAMILY.rows(m % 3000)] if r) for m in frames.tolist()]
    )
    assert torch.equal(tokens, merged)
    assert [FAMILY.rows(m) for m in (1, 3000, 3001)] == [1, 1500, 1501]


@pytest.fixture(scope="module")
def io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_GLMASR, weights="random", dtype="float32",
                             long_clip="windows", returns="tower", skip_init_encoder=True)  # fmt: skip


@pytest.fixture(scope="module")
def perturbed_io() -> ContinuousAudioIO:
    """The tiny card with random weights, perturbed (non-zero biases) so that padding leaks show."""
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_GLMASR, weights="random", dtype="float32", long_clip="windows",
                           returns="tower")  # fmt: skip
    perturb_(io.encoder, seed=PERTURB_SEED)
    return io


def test_the_processors_21_windows_are_the_limit(io) -> None:
    assert io.find_length(21 * 30 * 16000) == 21 * 1500
    with pytest.raises(ClipTooLongError, match="630 s"):
        io.find_length(21 * 30 * 16000 + 160)


def merged(tower_rows: int) -> int:
    """The LM rows GlmAsrModel.get_audio_features makes of ``tower_rows`` rows: 4 rows -> 1, a partial group dropped.

    1500 rows per 30 s window is a multiple of 4, so merging window by window (the model) or over the clip
    (the processor's count) gives the same number.
    """
    return (tower_rows - MERGE_FACTOR) // MERGE_FACTOR + 1


LONG_CLIPS = {"exactly 30 s": (WINDOW_SAMPLES, False), "30 s + 1 sample": (WINDOW_SAMPLES + 1, False),
              "35 s, loud first window": (35 * SR, True), "61 s: two windows and a partial one": (61 * SR, False),
              "630 s: the processor's limit": (MAX_SAMPLES, False)}  # fmt: skip


@pytest.mark.parametrize("name", LONG_CLIPS)
def test_long_clips_equal_the_processor_and_hfs_model(perturbed_io, rng, name: str) -> None:
    """Full attention over each window, padding included: every row depends on how the window was cut and padded."""
    num_samples, loud = LONG_CLIPS[name]
    assert modes.oracle_disagreements(perturbed_io, modes.clip(rng, num_samples, loud)) == []


def test_the_check_fails_when_contaudio_does_not_cut_the_waveform(perturbed_io, rng, monkeypatch) -> None:
    """One log-mel over the whole clip (no 30 s cut): the quiet window after a loud one gets the loud one's clamp."""
    monkeypatch.setattr(type(FAMILY), "cuts_waveform", False)
    mutated = ContinuousAudioIO(encoder_hf_model_tag=TINY_GLMASR, weights="random", dtype="float32",
                                long_clip="windows", returns="tower")  # fmt: skip
    mutated.encoder.load_state_dict(perturbed_io.encoder.state_dict())
    found = modes.oracle_disagreements(mutated, modes.clip(rng, 35 * SR, loud_first_window=True))
    assert len(found) == 1 and found[0].startswith("values differ"), found


def test_the_check_fails_when_hfs_processor_cuts_other_windows(perturbed_io, rng) -> None:
    """The oracle is the processor's own cut: a processor cutting 20 s windows (read from its extractor's
    chunk_length) gives other features for the same clip, and the check says so."""
    extractor = perturbed_io.features.hf_extractor()
    extractor.chunk_length = 20
    found = modes.oracle_disagreements(perturbed_io, modes.clip(rng, 35 * SR), extractor)
    assert len(found) == 1 and found[0].startswith("values differ"), found


PLACEHOLDER_SAMPLES = (1, 159, 160, 161, 400, 960, 961, 16000, WINDOW_SAMPLES - 1, WINDOW_SAMPLES,
                       WINDOW_SAMPLES + 1, WINDOW_SAMPLES + 961, 2 * WINDOW_SAMPLES + 1, MAX_SAMPLES)  # fmt: skip


def test_the_prompts_placeholders_are_find_length_merged_by_four(io) -> None:
    """contaudio returns the tower's rows (50 Hz, before get_audio_features' 4-row merge and projector): for
    ``T = find_length(N)`` the processor writes ``(T - 4) // 4 + 1`` placeholders (0 for T < 4)."""
    processor = FAMILY.hf_processor(io.features.hf_extractor())
    counts = {n: placeholder_count(processor, np.zeros(n, np.float32)) for n in PLACEHOLDER_SAMPLES}
    assert counts == {n: merged(io.find_length(n)) for n in PLACEHOLDER_SAMPLES}
    assert counts[960] == 0 < counts[961]  # 7 frames -> 4 tower rows -> the first placeholder


def test_placeholders_are_the_processors_own(io, monkeypatch) -> None:
    """A processor that writes one more placeholder per clip is seen: the count is HF's, not contaudio's rule."""
    processor = FAMILY.hf_processor(io.features.hf_extractor())
    count = GlmAsrProcessor._get_audio_token_length
    monkeypatch.setattr(GlmAsrProcessor, "_get_audio_token_length", lambda self, n: count(self, n) + 1)
    assert placeholder_count(processor, np.zeros(16000, np.float32)) == merged(io.find_length(16000)) + 1


# ------------------------------------------------------------------------------------------------ returns= modes
# Each mode on a whole tiny GLM-ASR saved by transformers (perturbed weights), against HF's whole model and the
# family's oracle, each clip alone through GlmAsrProcessor; clips < 30 s and > 30 s in one noise-padded batch
# (tests/helpers/window_modes.py).
DEPTH = 2  # the tiny card's layers: hidden states 0..2


@pytest.fixture(scope="module")
def checkpoint(family_checkpoints):
    return family_checkpoints["glmasr"]


def hidden_reference(model, layers: tuple[int, ...]) -> modes.Reference:
    """HF's whole (untrimmed) tower with ``output_hidden_states=True`` on the processor's windows, each window cut to
    its conv rows (as get_audio_features counts them)."""
    tower = model.model.audio_tower

    def reference(audio):
        out = tower(audio.input_features, output_hidden_states=True)
        rows = (audio.input_features_mask.sum(-1) - 1) // 2 + 1  # conv1 (stride 1), conv2 (stride 2)
        return modes.window_rows(torch.stack([out.hidden_states[i] for i in layers]), rows)

    return reference


def test_lm_rows_are_the_processors_placeholders_per_window_and_over_the_clip() -> None:
    """The processor counts ``(T - 4) // 4 + 1`` over the clip's summed frames, the model per window: contaudio's
    rule equals both, for every clip up to 3 windows long and beyond (1500 rows per window is a multiple of 4)."""
    frames = torch.arange(0, 3 * 3000 + 20)
    over_the_clip = GlmAsrProcessor._get_audio_token_length(None, frames)
    per_window = torch.tensor([sum(glm_asr_window_lm_rows(min(3000, m - s)) for s in range(0, m, 3000))
                               for m in frames.tolist()])  # fmt: skip
    assert torch.equal(glm_asr_lm_rows(frames), over_the_clip)
    assert torch.equal(glm_asr_lm_rows(frames), per_window)


def test_lm_find_length_is_the_processors_placeholder_count(io) -> None:
    """``find_length`` in ``"lm"`` mode = the placeholders GlmAsrProcessor writes, for clips < 30 s and > 30 s."""
    lm = ContinuousAudioIO(encoder_hf_model_tag=TINY_GLMASR, weights="random", long_clip="windows",
                           skip_init_encoder=True)  # fmt: skip
    processor = FAMILY.hf_processor(lm.features.hf_extractor())
    counts = {n: placeholder_count(processor, np.zeros(n, np.float32)) for n in PLACEHOLDER_SAMPLES}
    assert lm.returns == "lm" and counts == {n: lm.find_length(n) for n in PLACEHOLDER_SAMPLES}
    assert lm.family.hf_placeholders(lm.features.hf_extractor(), np.zeros(WINDOW_SAMPLES + 961, np.float32)) == 376
    assert io.family.hf_placeholders(io.features.hf_extractor(), np.zeros(16000, np.float32)) is None  # "tower"


def test_lm_is_the_merged_projected_pooler_output(checkpoint, rng) -> None:
    """find_length == preprocess's T == encode_batch rows == HF's pooler_output rows == the processor's
    placeholders, values within float32 tolerance of HF's whole model; the module holds the tower and projector."""
    directory, model = checkpoint
    io = modes.mode_io(directory, "lm")
    assert io.feature_dim() == model.config.text_config.hidden_size
    assert {name.split(".")[0] for name in io.encoder.state_dict()} == {"audio_tower", "multi_modal_projector"}
    projector = model.model.multi_modal_projector.state_dict()
    assert all(torch.equal(io.encoder.multi_modal_projector.state_dict()[k], v) for k, v in projector.items())
    assert modes.disagreements(io, modes.clips(rng), rng, modes.lm_reference(model)) == []


def test_lm_loads_the_hubs_key_names(checkpoint, tmp_path) -> None:
    """zai-org/GLM-ASR-Nano-2512 keeps ``audio_tower.*`` / ``multi_modal_projector.*`` (transformers 4 names): the lm
    module reads exactly those (and nothing of the LM)."""
    directory, model = checkpoint
    config = json.loads((directory / "config.json").read_text())
    relayout(directory, tmp_path, rename_prefixes(HUB_KEYS), config)
    io = modes.mode_io(tmp_path, "lm")
    ours = io.encoder.state_dict()
    theirs = {f"{part}.{key}": value for part in ("audio_tower", "multi_modal_projector")
              for key, value in model.model.get_submodule(part).state_dict().items()}  # fmt: skip
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_lm_check_fails_when_either_side_breaks(checkpoint, rng, monkeypatch) -> None:
    """Our side: tower rows grouped in the wrong order before the projector. HF's side: its get_audio_features
    moving or dropping a row, its processor writing one more placeholder."""
    directory, model = checkpoint
    io, wavs = modes.mode_io(directory, "lm"), modes.clips(rng)[:2]
    reference = modes.lm_reference(model)
    with monkeypatch.context() as patch:
        patch.setattr(GlmAsrLM, "forward", forward_merging_strided_rows)
        assert fails_with(modes.disagreements(io, wavs, rng, reference), "encode_batch differs", len(wavs))
    get_audio_features = GlmAsrModel.get_audio_features
    for fault, says in ((lambda rows: rows + 1e-3, "encode_batch differs"), (lambda rows: rows[:-1], "rows differ")):
        with monkeypatch.context() as patch:
            patch.setattr(GlmAsrModel, "get_audio_features", hf_fault(get_audio_features, fault))
            assert fails_with(modes.disagreements(io, wavs, rng, reference), says, len(wavs))
    count = GlmAsrProcessor._get_audio_token_length
    with monkeypatch.context() as patch:
        patch.setattr(GlmAsrProcessor, "_get_audio_token_length", lambda self, n: count(self, n) + 1)
        assert fails_with(modes.disagreements(io, wavs, rng, reference), "the processor's placeholders", len(wavs))


def fails_with(found: list[str], text: str, clips: int) -> bool:
    """One finding per clip, each saying ``text``."""
    return len(found) == clips and all(text in finding for finding in found)


def forward_merging_strided_rows(self, encoder, mel, lengths):
    """The injected bug on our side: LM row ``j`` of a window made of tower rows ``j, j + 375, ...``, not ``4 j ...``"""
    hidden, frames = self.window_forward(encoder.audio_tower, mel, lengths)  # [K, 1500, d]
    groups = hidden.reshape(hidden.shape[0], MERGE_FACTOR, -1, hidden.shape[2]).transpose(1, 2)
    merged = groups.reshape(hidden.shape[0], groups.shape[1], -1)
    return encoder.multi_modal_projector(select_rows(merged, glm_asr_window_lm_rows(frames)))


def hf_fault(get_audio_features, fault):
    """HF's get_audio_features with ``fault`` applied to its pooler_output (the injected bug on HF's side)."""

    def broken(self, *args, **kwargs):
        out = get_audio_features(self, *args, **kwargs)
        out.pooler_output = fault(out.pooler_output)
        return out

    return broken


def test_lm_refuses_a_tower_that_does_not_merge_four_rows() -> None:
    config = GlmAsrConfig(audio_config={"hidden_size": 32, "intermediate_size": 64}, text_config={"hidden_size": 32})
    with pytest.raises(ValueError, match=r"intermediate_size=64, hidden_size=32.*merges 4"):
        check_merge(config)


def test_full_size_card_lm_width_and_flops() -> None:
    """The full-size card: the LM width (2048) and the projector's matmuls on top of the tower's."""
    lm = ContinuousAudioIO(encoder_hf_model_tag="zai-org/GLM-ASR-Nano-2512", weights="random", skip_init_encoder=True)
    assert lm.feature_dim() == 2048 and lm.find_length(16000) == 12  # 50 tower rows -> 12 LM rows
    config = lm.family.module_config(lm.source.encoder_config, lm.source.model_config)
    extra = lm.family.flops(config, [3000]) - FAMILY.flops(lm.source.encoder_config, [3000])
    assert extra == pytest.approx(2 * 375 * (5120 * 4096 + 4096 * 2048))


HIDDEN_LAYERS = [[0, 1, 2], [-1], [1], [2, 0]]  # the last entry is after the final norm


@pytest.mark.parametrize("layers", HIDDEN_LAYERS, ids=str)
def test_hidden_states_equal_hfs_output_hidden_states(checkpoint, rng, layers) -> None:
    directory, model = checkpoint
    io = modes.mode_io(directory, "hidden_states", layers)
    assert len(io.encoder.layers) == max(io.layers)  # only the layers up to the deepest asked for
    assert isinstance(io.encoder.norm, torch.nn.Identity) == (DEPTH not in io.layers)
    assert modes.disagreements(io, modes.clips(rng), rng, hidden_reference(model, io.layers)) == []


def test_hidden_states_check_fails_when_either_side_breaks(checkpoint, rng, monkeypatch) -> None:
    """Our side: one log-mel over the whole clip (no 30 s cut); the final norm kept on a trimmed tower (so HF's
    last entry of it is normed). HF's side: the tower's hidden states moved."""
    directory, model = checkpoint
    wavs = [modes.clip(rng, 35 * modes.SR, loud_first_window=True), modes.clip(rng, 16000)]
    with monkeypatch.context() as patch:
        patch.setattr(type(FAMILY), "cuts_waveform", False)
        io = modes.mode_io(directory, "hidden_states", [0, 1])
        found = modes.disagreements(io, wavs, rng, hidden_reference(model, io.layers))
    assert len(found) == 1 and found[0].startswith(f"{35 * modes.SR} samples: encode_batch differs"), found
    with monkeypatch.context() as patch:
        patch.setattr(type(FAMILY), "final_norm", None)  # the final norm kept when trimmed
        io = modes.mode_io(directory, "hidden_states", [1])
    assert fails_with(modes.disagreements(io, wavs, rng, hidden_reference(model, io.layers)), "the oracle", 2)
    forward = GlmAsrEncoder.forward

    moved = moved_hidden_states(forward)

    io = modes.mode_io(directory, "hidden_states", [0, 1])
    with monkeypatch.context() as patch:
        patch.setattr(GlmAsrEncoder, "forward", moved)
        assert fails_with(modes.disagreements(io, wavs, rng, hidden_reference(model, io.layers)), "differs", 2)
