"""The conformance table: every registered family with its tiny card, a full checkpoint saved by
transformers itself, and HF's real full-model path for a clip (to prove the family's oracle harness).

Adding a family = one module in ``contaudio/encoders/`` + its cards + one ``FamilyCase`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from contaudio.encoders import FAMILIES, UNAVAILABLE
from contaudio.features.torchaudio_mel import torchaudio_for_hf_granite_speech
from helpers import checkpoints as ck


@dataclass(frozen=True)
class FamilyCase:
    """One family in the conformance table.

    family: registry name; card: its tiny test card; encoder_config: its Hydra ``conf/encoder/`` name;
    save: writes a full tiny checkpoint (sharded, by transformers) into a directory and returns the
    model; tower: where that model keeps the audio tower; hf_rows: HF's real full model on one 16 kHz
    clip -> the rows contaudio returns; flop_lengths: clip lengths (mel frames) whose FLOPs HF's
    forward spends exactly as the family's FLOP rule counts them (whole chunks or windows).
    """

    family: str
    card: str
    encoder_config: str
    save: Callable[[Path], nn.Module]
    tower: str
    hf_rows: Callable[[nn.Module, np.ndarray], torch.Tensor]
    flop_lengths: tuple[int, ...]

    def __str__(self) -> str:
        return self.family

    def audio_tower(self, model: nn.Module) -> nn.Module:
        """The audio tower at ``tower`` (before transformers 5.21, an omni thinker's is at ``thinker.audio_tower``)."""
        try:
            return model.get_submodule(self.tower)
        except AttributeError:
            return model.get_submodule(self.tower.replace("thinker.model.", "thinker."))


def extractor_output(card: str, wav: np.ndarray, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    out = ck.card_extractor(card)(wav, sampling_rate=16000, return_attention_mask=True, return_tensors="pt", **kwargs)
    return out["input_features"], out["attention_mask"]


def thinker_rows(card: str, **padding: object) -> Callable[[nn.Module, np.ndarray], torch.Tensor]:
    """``thinker.get_audio_features`` of a whole Qwen-Omni model on the features its processor gives the clip alone
    (``padding``: Qwen2.5-Omni's processor pads to max_length, Qwen3-Omni's ``padding=True, truncation=False``)."""

    def rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
        features, mask = extractor_output(card, wav, **padding)
        return model.thinker.get_audio_features(features, feature_attention_mask=mask).last_hidden_state

    return rows


def whisper_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """WhisperModel's encoder on the processor's 30 s features, cut to HF's valid length."""
    features, mask = extractor_output(ck.TINY_WHISPER, wav, padding="max_length")
    encoder = model.get_encoder()
    rows = int(encoder._get_feat_extract_output_lengths(mask.sum(-1)))
    return encoder(features).last_hidden_state[0, :rows]


def qwen2_audio_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """Qwen2AudioForConditionalGeneration.forward with as many audio tokens as its processor counts: the
    tower output the model scatters into the LM, read at the projector's input."""
    features, mask = extractor_output(ck.TINY_QWEN2_AUDIO, wav, padding="max_length")
    frames = int(mask.sum())
    tokens = (((frames - 1) // 2 + 1) - 2) // 2 + 1  # Qwen2AudioProcessor's count
    captured = {}
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, args, out: captured.update(x=args[0]))
    try:
        model(
            input_ids=torch.full((1, tokens), ck.TINY_AUDIO_TOKEN), input_features=features, feature_attention_mask=mask
        )  # fmt: skip  (HF raises if tokens and features disagree)
    finally:
        hook.remove()
    return captured["x"][0, :tokens]


def voxtral_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """VoxtralForConditionalGeneration.get_audio_features on its processor's windows, each cut to its valid rows."""
    features, mask = extractor_output(ck.TINY_VOXTRAL, wav, padding=True, truncation=False, pad_to_multiple_of=480000)
    windows = features.reshape(features.shape[1], -1, 3000).transpose(0, 1)  # as VoxtralProcessor cuts them
    hidden = model.get_audio_features(windows).last_hidden_state  # [K, 1500, d]
    frames = int(mask.sum())
    valid = [min(3000, frames - start) for start in range(0, frames, 3000)]
    return torch.cat([h[: (n - 1) // 2 + 1] for h, n in zip(hidden, valid, strict=True)])


def phi4_multimodal_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """Phi4MultimodalForCausalLM.forward with as many audio tokens as its extractor counts (audio_embed_sizes), one
    audio as its processor sends it: the tower output the model projects, read at up_proj_for_speech's input."""
    out = ck.card_extractor(ck.TINY_PHI4_MULTIMODAL)([wav], sampling_rate=16000, return_tensors="pt")
    tokens = int(out["audio_embed_sizes"][0])
    embed = model.model.embed_tokens_extend.audio_embed
    captured = {}
    hook = embed.up_proj_for_speech.register_forward_hook(lambda m, args, out: captured.update(x=args[0]))
    try:
        model(input_ids=torch.full((1, tokens), ck.TINY_AUDIO_TOKEN), audio_input_features=out["audio_input_features"],
              audio_embed_sizes=out["audio_embed_sizes"])  # fmt: skip
    finally:
        hook.remove()
    return captured["x"][0, :tokens]


def granite_speech_lm_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """GraniteSpeechForConditionalGeneration.forward on one audio as its processor prepares it, with as many audio
    tokens as the processor counts (input_features_mask): the projector rows the model scatters into the LM input."""
    with torchaudio_for_hf_granite_speech():  # on torchaudio, or contaudio's stand-in where torchaudio is missing
        out = ck.card_extractor(ck.TINY_GRANITE_SPEECH)([torch.from_numpy(wav)])
    tokens = int(out["input_features_mask"].sum())
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(x=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        model(  # HF raises if tokens and rows disagree
            input_ids=torch.full((1, tokens), ck.TINY_AUDIO_TOKEN),
            input_features=out["input_features"],
            input_features_mask=out["input_features_mask"],
        )
    finally:
        hook.remove()
    return captured["x"][0]


def qwen3_asr_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """Qwen3ASRForConditionalGeneration.get_audio_features on its processor's features (padding=True, the clip
    alone): the tower's rows, read before the projector."""
    features, mask = extractor_output(ck.TINY_QWEN3_ASR, wav, padding=True, truncation=False)
    return model.get_audio_features(features, mask).last_hidden_state


def processor_windows(card: str, wav: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The Audio Flamingo 3 / GLM-ASR processors' audio path: the waveform cut into 30 s pieces, each extracted
    with max_length padding -> ``[K, n_mels, 3000]`` features and ``[K, 3000]`` masks."""
    pieces = [wav[start : start + 480000] for start in range(0, len(wav), 480000)]
    out = ck.card_extractor(card)(pieces, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


def audioflamingo3_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """AudioFlamingo3ForConditionalGeneration.get_audio_features per window, rows by its tower's length helper."""
    features, mask = processor_windows(ck.TINY_AUDIOFLAMINGO3, wav)
    hidden = model.get_audio_features(features, mask).last_hidden_state  # [K, 750, d]
    _, rows = model.model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))
    return torch.cat([h[:n] for h, n in zip(hidden, rows.tolist(), strict=True)])


def glmasr_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """GlmAsrForConditionalGeneration.get_audio_features per window, each cut to its conv rows."""
    features, mask = processor_windows(ck.TINY_GLMASR, wav)
    hidden = model.get_audio_features(features, mask).last_hidden_state  # [K, 1500, d]
    rows = (mask.sum(-1) - 1) // 2 + 1  # conv1 (stride 1) then conv2 (stride 2), as get_audio_features counts
    return torch.cat([h[:n] for h, n in zip(hidden, rows.tolist(), strict=True)])


def gemma3n_rows(model: nn.Module, wav: np.ndarray) -> torch.Tensor:
    """Gemma3nForConditionalGeneration.forward on the extractor's output as Gemma3nProcessor calls it, with its 188
    audio soft tokens: the audio tower's rows the model scatters into the LM (before embed_audio), where its own
    audio_mel_mask marks them valid (read at the tower's output: transformers 5.14 returns no audio_outputs)."""
    out = ck.card_extractor(ck.TINY_GEMMA3N)(wav, return_tensors="pt")
    ids = torch.full((1, model.config.audio_soft_tokens_per_image), model.config.audio_token_id)
    captured = {}
    hook = model.model.audio_tower.register_forward_hook(lambda m, args, out: captured.update(audio=out))
    try:
        model(input_ids=ids, input_features=out["input_features"], input_features_mask=out["input_features_mask"])
    finally:
        hook.remove()
    audio = captured["audio"]
    return audio.last_hidden_state[~audio.audio_mel_mask]


WINDOW_LENGTHS = (3000, 100, 3500)  # a full window, a short clip (one window), a 35 s clip (two)
FAMILY_CASES = (
    FamilyCase("qwen2_5_omni", ck.TINY_QWEN_OMNI, "tiny_qwen_omni", ck.save_tiny_qwen2_5_omni,
               "thinker.model.audio_tower", thinker_rows(ck.TINY_QWEN_OMNI, padding="max_length"), (200, 400, 1000)),
    FamilyCase("qwen3_omni", ck.TINY_QWEN3_OMNI, "tiny_qwen3_omni", ck.save_tiny_qwen3_omni,
               "thinker.model.audio_tower", thinker_rows(ck.TINY_QWEN3_OMNI, padding=True, truncation=False),
               (37, 200, 250, 1013)),
    FamilyCase("qwen2_audio", ck.TINY_QWEN2_AUDIO, "tiny_qwen2_audio", ck.save_tiny_qwen2_audio, "model.audio_tower",
               qwen2_audio_rows, WINDOW_LENGTHS),
    FamilyCase("whisper", ck.TINY_WHISPER, "tiny_whisper", ck.save_tiny_whisper, "model.encoder", whisper_rows,
               WINDOW_LENGTHS),
    FamilyCase("voxtral", ck.TINY_VOXTRAL, "tiny_voxtral", ck.save_tiny_voxtral, "model.audio_tower", voxtral_rows,
               WINDOW_LENGTHS),
    FamilyCase("qwen3_asr", ck.TINY_QWEN3_ASR, "tiny_qwen3_asr", ck.save_tiny_qwen3_asr, "model.audio_tower",
               qwen3_asr_rows, (37, 200, 250, 1013)),
    FamilyCase("audioflamingo3", ck.TINY_AUDIOFLAMINGO3, "tiny_audioflamingo3", ck.save_tiny_audioflamingo3,
               "model.audio_tower", audioflamingo3_rows, WINDOW_LENGTHS),
    FamilyCase("glmasr", ck.TINY_GLMASR, "tiny_glmasr", ck.save_tiny_glmasr, "model.audio_tower", glmasr_rows,
               WINDOW_LENGTHS),
    FamilyCase("phi4_multimodal", ck.TINY_PHI4_MULTIMODAL, "tiny_phi4_multimodal", ck.save_tiny_phi4_multimodal,
               "model.embed_tokens_extend.audio_embed.encoder", phi4_multimodal_rows, (37, 200, 4100)),
    FamilyCase("granite_speech", ck.TINY_GRANITE_SPEECH, "tiny_granite_speech", ck.save_tiny_granite_speech,
               "model.audio_tower", granite_speech_lm_rows, (40, 120, 400)),
    FamilyCase("gemma3n", ck.TINY_GEMMA3N, "tiny_gemma3n", ck.save_tiny_gemma3n, "model.audio_tower", gemma3n_rows,
               (37, 200, 1013, 2997)),
)  # fmt: skip


# ---------------------------------------------------------------- families the installed transformers lacks
def needs_family(family: str) -> pytest.MarkDecorator:
    """Skip where the installed transformers lacks ``family``; the reason names the transformers it needs."""
    missing = UNAVAILABLE.get(family)
    return pytest.mark.skipif(missing is not None, reason=missing.message() if missing else "")


CASE_PARAMS = [pytest.param(case, marks=needs_family(case.family)) for case in FAMILY_CASES]

# The table's column per returns= mode: how the experiments are told to run in it (Hydra overrides).
MODE_OVERRIDES = {
    "lm": ("encoder.returns=lm",),
    "tower": ("encoder.returns=tower",),
    "hidden_states": ("encoder.returns=hidden_states", "encoder.layers=[0,1]"),
}
SAME_AS_LM = "same as lm"  # a family whose tower's rows are the LM's has one module for both: one column


def family_modes(family: str) -> tuple[str, ...]:
    """The modes a family's column set holds: ``"lm"`` where the model has an LM, ``"tower"`` where its rows differ
    from the LM's (the tower before a projector), and ``"hidden_states"`` for every family."""
    if (found := FAMILIES.get(family)) is None:  # unavailable here: every mode, each skipped with the reason
        return tuple(MODE_OVERRIDES)
    lm = () if found.lm_view is None else ("lm",)
    tower = () if found.lm_view == "tower" else ("tower",)
    return (*lm, *tower, "hidden_states")


MODE_PARAMS = [
    pytest.param(case, mode, marks=needs_family(case.family), id=f"{case.family}-{mode}")
    for case in FAMILY_CASES
    for mode in family_modes(case.family)
]


class UnavailableFamilyFile(pytest.File):
    """Stands in for a module of an unavailable family, which cannot even be imported: collected as one skip."""

    def __init__(self, *, reason: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def collect(self):
        pytest.skip(self.reason)


def collect_unless_unavailable(collectors: list, family: str, file_path: Path, parent: pytest.Collector) -> list:
    """``collectors`` (pytest's for ``file_path``), or one :class:`UnavailableFamilyFile` when ``family`` is one
    the installed transformers lacks (for ``pytest_collect_file`` wrappers)."""
    missing = UNAVAILABLE.get(family)
    if missing is None:
        return collectors
    return [UnavailableFamilyFile.from_parent(parent, path=file_path, reason=missing.message())]
