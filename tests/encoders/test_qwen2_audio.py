"""Qwen2-Audio tower: the length rule, the long-clip policy, a bare encoder export, and a clip cut off loud.

Checked against HF's code on the same weights: ``_get_feat_extract_output_lengths`` for the rule; the
family's oracle (HF's ``Qwen2AudioModel.forward`` on our tower) against HF's whole model, and the verdicts
of length_check and mask_check failing when HF's side or ours is broken;
HF's extractor (clip zero-padded to whole 30 s windows, cut as Voxtral's processor cuts them) and
``Qwen2AudioForConditionalGeneration.forward`` (which masks the tower's attention and raises if
the audio tokens disagree with its own count) for clips longer than a window; and HF's 30 s
pipeline on a clip that ends loud. What every family shares (loading a whole checkpoint, oracle,
lengths, padded batches, FLOPs vs torch) is in ``test_families.py``.

``returns="lm"`` (the default): the tower's rows through HF's projector, against a whole model whose LM is wider
than the tower (so a wrong width shows): HF's ``Qwen2AudioProcessor`` + ``Qwen2AudioForConditionalGeneration``
end to end (the rows its forward splices into the LM's input, and the placeholders the processor wrote), for
noise-padded batches; the processor's count for many N; both sides' faults seen failing. ``"hidden_states"``:
HF's ``output_hidden_states`` of the whole model's tower (its last entry untied from the pooled
``last_hidden_state``), the layers built, and faults on both sides.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from helpers.audio import noise
from helpers.batches import noise_padded_batch, padded_batch
from helpers.checkpoints import (
    INLINE_PROMPT,
    TINY_QWEN2_AUDIO,
    TINY_TEXT,
    assert_holds_tower,
    card_encoder_config,
    card_extractor,
    perturbed,
    read_weights,
    relayout,
    rename_prefixes,
    save_tiny_qwen2_audio,
    save_with_features,
    writes_placeholders_through,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor
from transformers.models.qwen2_audio.modeling_qwen2_audio import (
    Qwen2AudioEncoder,
    Qwen2AudioEncoderLayer,
    Qwen2AudioModel,
)

import contaudio.encoders.qwen2_audio as qwen2_audio
from contaudio import ContinuousAudioIO
from contaudio.conformance import Verdict, judge, judge_length, tolerance_for
from contaudio.encoders import find_card, get_family
from contaudio.encoders.qwen2_audio import processor_placeholders, qwen2_audio_processor, qwen2_audio_rows
from contaudio.encoders.whisper import window_rows_of
from contaudio.encoders.windows import WINDOW_FRAMES, ClipTooLongError, hf_windows
from experiments.mutations import rows_off_by_one

ATOL = 1e-5  # fp32, same weights; our mel vs the extractor's differ by ~1e-6
HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP
TEXT_TOKEN = 1
TAIL_SILENCE_SAMPLES = 800  # 50 ms: the frames straddling the clip's end are then silence in HF's features too
LONG_SAMPLES = [WINDOW_SAMPLES + 481, 45 * 16000, 2 * WINDOW_SAMPLES, 2 * WINDOW_SAMPLES + 320]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_qwen2_audio_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_qwen2_audio_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             returns="tower")  # fmt: skip


@pytest.fixture(scope="module")
def io_windows(tiny_qwen2_audio_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_qwen2_audio_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows", returns="tower")  # fmt: skip


@pytest.fixture(scope="module")
def hf_model(tiny_qwen2_audio_checkpoint) -> Qwen2AudioForConditionalGeneration:
    """The whole model transformers saved (same weights as ``io``)."""
    return tiny_qwen2_audio_checkpoint[1]


def hf_extract(wav: np.ndarray, **padding) -> tuple[torch.Tensor, int]:
    """HF's extractor: ``(input_features [1, n_mels, F], valid frames)``."""
    out = card_extractor(TINY_QWEN2_AUDIO)(wav, sampling_rate=16000, return_attention_mask=True, return_tensors="pt",
                                            **padding)  # fmt: skip
    return out["input_features"], int(out["attention_mask"].sum())


def window_frames_of(frames: int) -> torch.Tensor:
    """Real frames of each 30 s window of a clip of ``frames`` frames, as Voxtral's processor cuts it: ``[k]``."""
    return torch.tensor([min(WINDOW_FRAMES, frames - s) for s in range(0, frames, WINDOW_FRAMES)])


def run_hf_model(hf_model, features: torch.Tensor, frames: int) -> torch.Tensor:
    """HF's whole-model forward on each 3000-frame window of ``features [1, n_mels, k * 3000]`` (one prompt per
    window, one audio token per row HF's own ``_get_feat_extract_output_lengths`` counts: HF raises if that
    disagrees with its tower); callers read what they need with hooks. Returns HF's rows per window ``[k]``."""
    windows = features[0].reshape(features.shape[1], -1, WINDOW_FRAMES).transpose(0, 1)  # as Voxtral's processor
    window_frames = window_frames_of(frames)
    _, rows = hf_model.model.audio_tower._get_feat_extract_output_lengths(window_frames)
    input_ids = torch.full((len(rows), int(rows.max()) + 2), TEXT_TOKEN)
    for i, count in enumerate(rows.tolist()):
        input_ids[i, 1 : 1 + count] = hf_model.config.audio_token_id
    with torch.inference_mode():
        hf_model(input_ids=input_ids, input_features=windows, attention_mask=torch.ones_like(input_ids),
                 feature_attention_mask=(torch.arange(WINDOW_FRAMES) < window_frames[:, None]).long())  # fmt: skip
    return rows


def hf_model_rows(hf_model, features: torch.Tensor, frames: int, projected: bool = False) -> torch.Tensor:
    """:func:`run_hf_model`'s tower output, read at the projector's input (``projected``: its output, what the
    forward splices into the LM), cut to HF's rows: ``[rows, d_model]`` (``[rows, LM width]``)."""
    captured = []
    hook = hf_model.model.multi_modal_projector.register_forward_hook(
        lambda _m, args, out: captured.append(out if projected else args[0])
    )
    try:
        rows = run_hf_model(hf_model, features, frames)
    finally:
        hook.remove()
    (tower,) = captured  # [k, 750, d_model or LM width]
    return tower[torch.arange(tower.shape[1]) < rows[:, None]]


def ends_in_silence(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A noise clip of ``num_samples`` whose last 50 ms are silence, as speech ends."""
    tail = np.zeros(TAIL_SILENCE_SAMPLES, np.float32)
    return np.concatenate([noise(rng, num_samples - TAIL_SILENCE_SAMPLES, 0.05), tail])


def encode(io: ContinuousAudioIO, wav: np.ndarray) -> tuple[int, torch.Tensor]:
    """preprocess + encode_batch on one clip: (preprocess's T, the rows)."""
    _, (rows, mel), _ = io.preprocess((wav, 16000))
    with torch.inference_mode():
        (feats,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
    return rows, feats


def test_rule_equals_hf_output_lengths(hf_model) -> None:
    """Within the window HF's own helper; past it, HF's helper summed over consecutive windows."""
    helper = hf_model.model.audio_tower._get_feat_extract_output_lengths
    ms = torch.arange(1, WINDOW_FRAMES + 1)
    assert torch.equal(qwen2_audio_rows(ms), helper(ms)[1])
    assert qwen2_audio_rows(0) == 0 and qwen2_audio_rows(WINDOW_FRAMES) == 750
    for m in (1, 2, 3, 2999, 3000, 3001, 3003, 6000, 9001):
        pieces = torch.tensor([min(WINDOW_FRAMES, m - s) for s in range(0, m, WINDOW_FRAMES)])
        assert qwen2_audio_rows(m) == int(qwen2_audio_rows(torch.tensor(m))) == int(helper(pieces)[1].sum())


def test_long_clip_raises_by_default_everywhere(io, rng) -> None:
    num_samples = WINDOW_SAMPLES + 1
    wav = noise(rng, num_samples, 0.01)
    for call in (lambda: io.preprocess((wav, 16000)), lambda: io.find_length(num_samples),
                 lambda: io.find_length(torch.tensor([num_samples, 16000])),
                 lambda: io.encode_batch(torch.zeros(1, 3001, 128), torch.tensor([3001]))):  # fmt: skip
        with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
            call()
    assert io.find_length(WINDOW_SAMPLES) == 750  # the window itself is fine


@pytest.mark.parametrize("num_samples", LONG_SAMPLES)
def test_long_clip_windows_equal_hfs_model_on_each_30s_window(io_windows, hf_model, rng, num_samples: int) -> None:
    """A clip ending in silence (as speech does) vs HF's extractor padded to whole windows and HF's model."""
    wav = ends_in_silence(rng, num_samples)
    rows, ours = encode(io_windows, wav)
    features, frames = hf_extract(wav, padding="longest", pad_to_multiple_of=WINDOW_SAMPLES, truncation=False)
    ref = hf_model_rows(hf_model, features, frames)
    assert io_windows.find_length(num_samples) == rows == ours.shape[0] == ref.shape[0]
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_a_clip_cut_off_loud_differs_from_hfs_pipeline_only_through_the_straddling_frames(io, hf_model, rng) -> None:
    """HF's 30 s pipeline computes the <= 2 frames whose STFT window straddles the clip's end from the clip;
    ours pads with silence there. The last valid conv row sees them and every row attends to it, so every
    row moves a little; with those frames set to HF's own padding value, HF gives our rows."""
    wav = noise(rng, 5 * 16000 + 77)  # loud to its last sample
    features, frames = hf_extract(wav, padding="max_length")  # Qwen2-Audio's processor: one 30 s window
    silence = features[0, :, -1:]  # the last frame sees only the zero padding
    straddling = (features[0, :, frames:] != silence).any(0).nonzero().flatten().tolist()
    assert straddling == list(range(len(straddling))) and 1 <= len(straddling) <= 2  # right after the clip
    patched = features.clone()
    patched[0, :, frames:] = silence
    rows, ours = encode(io, wav)
    pipeline = hf_model_rows(hf_model, features, frames)
    assert ours.shape == pipeline.shape == (rows, io.feature_dim())
    assert (ours - pipeline).abs().amax(1).min() > ATOL  # every row moves (measured: >= 5e-3)
    torch.testing.assert_close(ours, hf_model_rows(hf_model, patched, frames), atol=ATOL, rtol=0)


def test_loads_a_bare_encoder_export_from_one_file(tmp_path) -> None:
    """The shared suite loads the sharded full checkpoint; here a ``qwen2_audio_encoder`` export with bare keys."""
    tower = save_tiny_qwen2_audio(tmp_path, encoder_only=True, max_shard_size="10GB")
    assert (tmp_path / "model.safetensors").is_file()
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32", returns="tower")
    assert io.family.name == "qwen2_audio"
    assert_holds_tower(io, tower.state_dict())
    with pytest.raises(ValueError, match="returns='lm' needs the whole model's config"):  # no projector, no LM width
        ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")


# ------------------------------------------------------------------ the oracle is HF's forward, and its checks can fail
# 0 rows (<= 2 frames), 1 row (HF's legacy merge), a short clip, a full window, a clip over one window
ORACLE_SAMPLES = [2 * HOP, 3 * HOP + 1, 5 * 16000 + 77, WINDOW_SAMPLES, LONG_SAMPLES[0]]
FAULT_SAMPLES = [5 * 16000 + 77, LONG_SAMPLES[0]]
SHORT_CLIP_TAIL = 200  # n_fft // 2: the silence a clip under 50 ms ends in, so no STFT frame straddles a loud end
PERTURBATION = 1e-2  # far above the float32 tolerance (1e-4 + 1e-4 max|ref|) on the tiny tower's rows


def checks(io: ContinuousAudioIO, wav: np.ndarray) -> tuple[Verdict, Verdict]:
    """length_check's and mask_check's verdicts on one clip (its oracle asked from the waveform, as they ask it)."""
    _, (rows, mel), _ = io.preprocess((wav, 16000))
    mel = torch.from_numpy(mel)
    batch = torch.randn(2, mel.shape[0] + 9, mel.shape[1])  # the clip beside a longer noise clip
    batch[0, : mel.shape[0]] = mel
    with torch.inference_mode():
        batched = io.encode_batch(batch, torch.tensor([mel.shape[0], mel.shape[0] + 9]))[0]
        (alone,) = io.encode_batch(mel[None], torch.tensor([mel.shape[0]]))
        oracle = io.family.oracle(io.encoder, io.features.hf_extractor(), wav)
    counts = {"find_length": io.find_length(len(wav)), "preprocess_t": rows, "encoded": alone.shape[-2]}
    tolerance = tolerance_for(torch.float32)
    return judge_length(counts, oracle), judge(batched, alone, oracle, io.find_length(len(wav)), tolerance)


@pytest.mark.parametrize("num_samples", ORACLE_SAMPLES)
def test_oracle_is_hfs_forward_on_our_tower(io_windows, hf_model, rng, num_samples: int) -> None:
    """The family's oracle (``Qwen2AudioModel.forward`` run on our tower) == HF's whole model on the same features,
    row for row, as many rows as find_length; length_check's and mask_check's verdicts pass."""
    tail = TAIL_SILENCE_SAMPLES if num_samples > TAIL_SILENCE_SAMPLES else SHORT_CLIP_TAIL
    wav = np.concatenate([noise(rng, num_samples - tail), np.zeros(tail, np.float32)])  # ends in silence (see below)
    with torch.inference_mode():
        oracle = io_windows.family.oracle(io_windows.encoder, io_windows.features.hf_extractor(), wav)
        reference = hf_model_rows(hf_model, *hf_extract(wav, padding="longest", pad_to_multiple_of=WINDOW_SAMPLES,
                                                       truncation=False))  # fmt: skip
    assert oracle.error is None, oracle.error
    assert oracle.count == reference.shape[0] == io_windows.find_length(num_samples)
    torch.testing.assert_close(oracle.rows, reference, atol=ATOL, rtol=0)
    assert all(verdict.passed for verdict in checks(io_windows, wav)), checks(io_windows, wav)


def fewer_rows(original):
    """HF's length helper counting one row fewer per window (its forward then keeps one row fewer)."""

    def helper(self, input_lengths):
        conv_rows, output_rows = original(self, input_lengths)
        return conv_rows, (output_rows - 1).clamp(min=0)

    return helper


def perturbed_output(original):
    """HF's tower forward with every output value moved by :data:`PERTURBATION`."""

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.last_hidden_state = out.last_hidden_state + PERTURBATION
        return out

    return forward


def raising(_original):
    """HF's forward failing as it does when its rows and the prompt's placeholders disagree."""

    def forward(self, *args, **kwargs):
        raise ValueError("Audio features and audio tokens do not match, tokens: 750, features: 749")

    return forward


HF_FAULTS = {  # broken on HF's side: the oracle must move, and the checks fail
    "HF's helper counts a row fewer": (Qwen2AudioEncoder, "_get_feat_extract_output_lengths", fewer_rows),
    "HF's tower values moved": (Qwen2AudioEncoder, "forward", perturbed_output),
    "HF's forward raises": (Qwen2AudioModel, "forward", raising),
}


@pytest.mark.parametrize("fault", HF_FAULTS)
@pytest.mark.parametrize("num_samples", FAULT_SAMPLES)
def test_checks_fail_when_hfs_side_breaks(io_windows, rng, monkeypatch, fault: str, num_samples: int) -> None:
    owner, name, broken = HF_FAULTS[fault]
    monkeypatch.setattr(owner, name, broken(getattr(owner, name)))
    length, mask = checks(io_windows, ends_in_silence(rng, num_samples))
    assert not mask.passed, mask.reasons
    if fault != "HF's tower values moved":  # length_check sees counts only
        assert not length.passed, length.reasons
    else:
        assert length.passed and any("differs from HF" in reason for reason in mask.reasons), mask.reasons


def test_checks_fail_when_our_side_breaks(io_windows, rng, monkeypatch) -> None:
    """Broken on our side, against the same (intact) oracle: one row too many, consistently (the rule and the forward,
    experiments.mutations' rows_off_by_one, so contaudio agrees with itself), then values moved."""
    wav = ends_in_silence(rng, FAULT_SAMPLES[0])
    with monkeypatch.context() as patch:
        for name, method in rows_off_by_one(io_windows.family).items():
            patch.setattr(io_windows.family, name, method)
        length, mask = checks(io_windows, wav)
    assert not length.passed and not mask.passed
    assert any("HF gave" in reason for reason in length.reasons), length.reasons
    forward = qwen2_audio.masked_window_forward
    monkeypatch.setattr(qwen2_audio, "masked_window_forward", lambda *a, **k: forward(*a, **k) + PERTURBATION)
    length, mask = checks(io_windows, wav)
    assert length.passed and any("differs from HF" in reason for reason in mask.reasons), mask.reasons


# ------------------------------------------------------------------ returns="lm": HF's projector, its processor's count
SR = 16000
PADDING_EXTRA = 9  # noise frames past the longest clip of a batch
# 0 rows (<= 2 frames), 1 row (HF's legacy merge), a short clip, a full window, a clip over one window, three windows
LM_SAMPLES = [2 * HOP, 3 * HOP + 1, 5 * SR + 77, WINDOW_SAMPLES, LONG_SAMPLES[0], 2 * WINDOW_SAMPLES + 320]
LEGACY_LM_KEYS = {"model.audio_tower.": "audio_tower.", "model.multi_modal_projector.": "multi_modal_projector.",
                  "model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}  # fmt: skip
unlegacy = rename_prefixes({new: old for old, new in LEGACY_LM_KEYS.items()})  # any saved layout -> module names


def clip(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Noise ending in silence, as speech ends: 50 ms, or n_fft // 2 samples for a clip under 0.1 s (so no STFT
    frame straddles a loud end; a clip of <= 200 samples is silence but for its first sample)."""
    tail = TAIL_SILENCE_SAMPLES if num_samples > 2 * TAIL_SILENCE_SAMPLES else min(SHORT_CLIP_TAIL, num_samples - 1)
    return np.concatenate([noise(rng, num_samples - tail), np.zeros(tail, np.float32)])


def audio_token_id(processor: Qwen2AudioProcessor) -> int:
    return processor.tokenizer.convert_tokens_to_ids(processor.audio_token)


@pytest.fixture(scope="module")
def processor() -> Qwen2AudioProcessor:
    """HF's ``Qwen2AudioProcessor`` on the tiny card's extractor (HF's own class) and a tiny tokenizer."""
    return qwen2_audio_processor(card_extractor(TINY_QWEN2_AUDIO))


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory, processor) -> tuple:
    """(directory, model): a whole tiny Qwen2-Audio saved by transformers, its LM as wide as the tiny card's
    model_config says (48, wider than the tower's 32), its audio token the processor's."""
    text = {**TINY_TEXT, **find_card(TINY_QWEN2_AUDIO).model_config["text_config"]}
    audio = {"model_type": "qwen2_audio_encoder", **card_encoder_config(TINY_QWEN2_AUDIO)}
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=audio_token_id(processor))
    model = perturbed(lambda: Qwen2AudioForConditionalGeneration(config), init_seed=4323, seed=3)
    directory = tmp_path_factory.mktemp("qwen2-audio-lm")
    return directory, save_with_features(model, directory, TINY_QWEN2_AUDIO, "40KB")


@pytest.fixture(scope="module")
def lm_io(lm_checkpoint) -> ContinuousAudioIO:
    """The whole checkpoint in the default mode ("lm"), clips over 30 s as windows."""
    return ContinuousAudioIO(encoder_hf_model_tag=str(lm_checkpoint[0]), weights="pretrained", dtype="float32",
                             long_clip="windows")  # fmt: skip


def hf_spliced(hf_model, processor: Qwen2AudioProcessor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
    """HF end to end for a prompt holding the clip alone (<= 30 s): ``Qwen2AudioProcessor``, then the whole model's
    forward. Returns the rows the forward splices into the LM's input (read at the LM's ``inputs_embeds`` where the
    prompt holds audio tokens) and the number of those tokens the processor wrote."""
    out = processor(text=f"listen {processor.audio_token} now", audio=wav, sampling_rate=SR, return_tensors="pt")
    captured = {}
    hook = hf_model.model.language_model.register_forward_pre_hook(
        lambda _m, _args, kwargs: captured.update(x=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            hf_model(**out)
    finally:
        hook.remove()
    audio = out["input_ids"] == audio_token_id(processor)
    return captured["x"][audio], int(audio.sum())


def lm_disagreements(io: ContinuousAudioIO, hf_model, processor, wavs: list[np.ndarray], rng) -> list[str]:
    """contaudio on a noise-padded batch of ``wavs`` (find_length, preprocess, encode_batch) against HF for each clip
    alone: the whole model on its windows (projector output), HF's pipeline (processor + model: the rows spliced
    into the LM, the placeholders written) for clips <= 30 s, the processor's count, and the family's oracle.
    Every way they differ; [] when every count agrees and every value is within ATOL."""
    processed = [io.preprocess((wav, SR))[1] for wav in wavs]
    mel, lengths = noise_padded_batch([m for _, m in processed], PADDING_EXTRA, rng)
    extractor = io.features.hf_extractor()
    found = []
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
    for wav, (rows, _), ours in zip(wavs, processed, outs, strict=True):
        where = f"{len(wav)} samples"
        with torch.inference_mode():
            oracle = io.family.oracle(io.encoder, extractor, wav)
        if oracle.rows is None:
            found.append(f"{where}: HF raised {oracle.error}")
            continue
        features = hf_extract(wav, padding="longest", pad_to_multiple_of=WINDOW_SAMPLES, truncation=False)
        theirs = hf_model_rows(hf_model, *features, projected=True)
        counts = {"find_length": io.find_length(len(wav)), "preprocess": rows, "encode_batch": ours.shape[0],
                  "the oracle": oracle.count, "the oracle's placeholders": oracle.placeholders,
                  "HF's model": theirs.shape[0],
                  "the processor's placeholders": processor_placeholders(processor, wav)}  # fmt: skip
        values = {"encode_batch": ours, "the oracle": oracle.rows}
        if len(wav) <= WINDOW_SAMPLES:
            try:
                spliced, tokens = hf_spliced(hf_model, processor, wav)
            except Exception as err:  # HF's own pipeline refusing the prompt is a finding here
                found.append(f"{where}: HF's pipeline raised {type(err).__name__}: {err}")
                continue
            counts |= {"HF's pipeline": spliced.shape[0], "HF's pipeline placeholders": tokens}
            values["HF's pipeline"] = spliced
        if len(set(counts.values())) > 1:
            found.append(f"{where}: rows differ: {counts}")
            continue
        for name, value in values.items():
            if value.shape != theirs.shape:
                found.append(f"{where}: {name} gave {tuple(value.shape)}, HF's model {tuple(theirs.shape)}")
            elif value.numel() and (diff := float((value - theirs).abs().max())) > ATOL:
                found.append(f"{where}: {name} differs from HF's model by {diff:.3g}")
    return found


def test_lm_rows_are_what_hfs_forward_splices_into_the_lm(lm_io, lm_checkpoint, processor, rng) -> None:
    """Counts (find_length, preprocess, encode_batch, oracle, HF's model, HF's processor) all agree and values are
    HF's within float32 tolerance, LM-wide, for clips of 0 and 1 rows, < 30 s, one window and several windows."""
    assert lm_io.returns == "lm" and lm_io.feature_dim() == 48 != lm_io.encoder.config.audio_config.d_model
    assert not lm_disagreements(lm_io, lm_checkpoint[1], processor, [clip(rng, n) for n in LM_SAMPLES], rng)


def test_lm_reads_only_the_tower_and_the_projector_in_both_layouts(lm_checkpoint, tmp_path) -> None:
    """The hub's keys (``audio_tower.``/``multi_modal_projector.``, what transformers 5.25 saves) and transformers 5's
    module names (``model.audio_tower.``/``model.multi_modal_projector.``): the same weights, HF's, none of the LM."""
    directory, model = lm_checkpoint
    reference = {f"audio_tower.{k}": v for k, v in model.model.audio_tower.state_dict().items()}
    reference |= {f"multi_modal_projector.{k}": v for k, v in model.model.multi_modal_projector.state_dict().items()}
    config = json.loads((directory / "config.json").read_text())
    layouts = {"hub": rename_prefixes(LEGACY_LM_KEYS), "modules": lambda key: key}  # from transformers 5's names
    for name, rename in layouts.items():
        relayout(directory, tmp_path / name, lambda key, rename=rename: rename(unlegacy(key)), config)
        projector = "multi_modal_projector." if name == "hub" else "model.multi_modal_projector."
        assert any(key.startswith(projector) for key in read_weights(tmp_path / name)), name
        io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path / name), weights="pretrained", dtype="float32")
        assert_holds_tower(io, reference, name)


@pytest.mark.parametrize("fault", ["HF's helper counts a row fewer", "HF's tower values moved", "HF's forward raises"])
def test_lm_checks_fail_when_hfs_side_breaks(lm_io, lm_checkpoint, processor, rng, monkeypatch, fault: str) -> None:
    wav = clip(rng, FAULT_SAMPLES[0])
    owner, name, broken = HF_FAULTS[fault]
    monkeypatch.setattr(owner, name, broken(getattr(owner, name)))
    length, mask = checks(lm_io, wav)
    assert not mask.passed, mask.reasons
    assert length.passed == (fault == "HF's tower values moved"), length.reasons  # length_check sees counts only
    assert lm_disagreements(lm_io, lm_checkpoint[1], processor, [wav], rng)


def one_token_fewer(original):
    """HF's processor writing one audio token fewer than it counts."""

    def replace(self, audio_inputs, audio_idx, **kwargs):
        return original(self, audio_inputs, audio_idx, **kwargs)[len(self.audio_token) :]

    return replace


@pytest.mark.skipif(
    not writes_placeholders_through(Qwen2AudioProcessor),
    reason=INLINE_PROMPT,
)
def test_lm_count_check_fails_when_hfs_processor_counts_otherwise(lm_io, lm_checkpoint, processor, rng,
                                                                  monkeypatch) -> None:  # fmt: skip
    """The processor writes one token fewer per audio: HF's own model refuses that prompt (<= 30 s), and the count
    differs from every other (a clip over 30 s, which HF's pipeline has no path for: one audio per 30 s piece)."""
    wavs = [clip(rng, FAULT_SAMPLES[0]), clip(rng, FAULT_SAMPLES[1])]
    fewer = one_token_fewer(Qwen2AudioProcessor.replace_audio_token)
    monkeypatch.setattr(Qwen2AudioProcessor, "replace_audio_token", fewer)
    short, long = lm_disagreements(lm_io, lm_checkpoint[1], processor, wavs, rng)
    assert "HF's pipeline raised ValueError" in short and "tokens: 124, features: 125" in short, short
    assert """the processor's placeholders": 749""" in long and "'find_length': 751" in long, long  # 2 pieces, 2 fewer


def test_lm_checks_fail_when_our_side_breaks(lm_io, lm_checkpoint, processor, rng, monkeypatch) -> None:
    """One row too many (rule and forward, consistently), the projector left out (the tower's width), values moved."""
    wav, model = clip(rng, FAULT_SAMPLES[0]), lm_checkpoint[1]
    with monkeypatch.context() as patch:
        for name, method in rows_off_by_one(lm_io.family).items():
            patch.setattr(lm_io.family, name, method)
        assert not checks(lm_io, wav)[0].passed
        assert "rows differ" in lm_disagreements(lm_io, model, processor, [wav], rng)[0]
    with monkeypatch.context() as patch:
        patch.setattr(
            lm_io.family, "forward", lambda enc, mel, n: qwen2_audio.masked_window_forward(enc.audio_tower, mel, n)
        )
        assert "gave (125, 32), HF's model (125, 48)" in lm_disagreements(lm_io, model, processor, [wav], rng)[0]
    forward = qwen2_audio.masked_window_forward
    monkeypatch.setattr(qwen2_audio, "masked_window_forward", lambda *a, **k: forward(*a, **k) + PERTURBATION)
    length, mask = checks(lm_io, wav)
    assert length.passed and any("differs from HF" in reason for reason in mask.reasons), mask.reasons
    assert "encode_batch differs from HF's model" in lm_disagreements(lm_io, model, processor, [wav], rng)[0]


# the processor's count for many N: 1-2 frames (0 rows), hop multiples +-1 around the first rows, 30 s, the window
# edge and whole windows past it, and random N up to 65 s
EDGE_HOPS = (1, 2, 3, 4, 5, 6, 99, 100, 101, 2998, 2999, 3000, 3001, 3002, 3003, 6000, 6001)
COUNT_SAMPLES = sorted({1, *[k * HOP + d for k in EDGE_HOPS for d in (-1, 0, 1)],
                        *np.random.default_rng(5).integers(1, 65 * SR, size=8).tolist()})  # fmt: skip


@pytest.fixture(scope="module")
def card_lm_io() -> ContinuousAudioIO:
    """The tiny card in the default mode ("lm"), random weights, clips over 30 s as windows."""
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN2_AUDIO, weights="random", dtype="float32",
                             long_clip="windows")  # fmt: skip


def count_mismatches(io: ContinuousAudioIO, processor: Qwen2AudioProcessor, sizes: list[int]) -> list[tuple]:
    """Each N where the processor's placeholders, find_length, preprocess's T and encode_batch's rows (one
    noise-padded batch of all the clips) disagree: ``(N, {name: count})``."""
    rng = np.random.default_rng(1)
    wavs = [noise(rng, n) for n in sizes]
    processed = [io.preprocess((wav, SR))[1] for wav in wavs]
    mel, lengths = padded_batch([m for _, m in processed], extra=PADDING_EXTRA, fill=1.0)
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
    found = []
    for n, wav, (rows, _), out in zip(sizes, wavs, processed, outs, strict=True):
        counts = {"placeholders": processor_placeholders(processor, wav), "find_length": io.find_length(n),
                  "preprocess": rows, "encode_batch": out.shape[0]}  # fmt: skip
        if len(set(counts.values())) > 1:
            found.append((n, counts))
    return found


def test_lm_count_is_the_processors_for_many_n(card_lm_io, processor) -> None:
    assert not count_mismatches(card_lm_io, processor, COUNT_SAMPLES)
    assert card_lm_io.find_length(2 * HOP) == 0 and card_lm_io.find_length(2 * HOP + 1) == 1


@pytest.mark.skipif(
    not writes_placeholders_through(Qwen2AudioProcessor),
    reason=INLINE_PROMPT,
)
def test_lm_count_check_fails_on_either_side(card_lm_io, processor, monkeypatch) -> None:
    sizes = [16000, WINDOW_SAMPLES + 481]
    with monkeypatch.context() as patch:  # HF's processor writes one token more per audio
        replace = Qwen2AudioProcessor.replace_audio_token
        patch.setattr(
            Qwen2AudioProcessor, "replace_audio_token", lambda self, *a, **k: replace(self, *a, **k) + self.audio_token
        )
        assert [n for n, _ in count_mismatches(card_lm_io, processor, sizes)] == sizes
    for name, method in rows_off_by_one(card_lm_io.family).items():  # ours: one row more, consistently
        monkeypatch.setattr(card_lm_io.family, name, method)
    assert [n for n, _ in count_mismatches(card_lm_io, processor, sizes)] == sizes


def test_lm_full_size_cards_project_to_4096_and_count_the_projector(card_lm_io) -> None:
    """The 7B cards' model_config (as the hub's config.json, whose text_config leaves hidden_size to Qwen2Config's
    default 4096); the FLOP rule adds 2 * 750 * 1280 * 4096 per window."""
    family = get_family("qwen2_audio")
    for tag in ("Qwen/Qwen2-Audio-7B", "Qwen/Qwen2-Audio-7B-Instruct"):
        card = find_card(tag)
        lm = family.view("lm")
        config = lm.module_config(card.encoder_config, card.model_config)
        assert lm.output_dim(config) == 4096
        hub_text = {key: value for key, value in card.model_config["text_config"].items() if key != "hidden_size"}
        assert (
            lm.output_dim(lm.module_config(card.encoder_config, {**card.model_config, "text_config": hub_text})) == 4096
        )
        assert (
            lm.flops(config, [3000, 3001])
            == family.flops(card.encoder_config, [3000, 3001]) + 3 * 2 * 750 * 1280 * 4096
        )
    with pytest.raises(ValueError, match="card without 'model_config'"):
        family.view("lm").module_config(card.encoder_config, None)


def test_lm_flop_rule_equals_torchs_counter_on_hfs_forward() -> None:
    io = ContinuousAudioIO(
        encoder_hf_model_tag=TINY_QWEN2_AUDIO,
        weights="random",
        dtype="float32",
        attn_implementation="eager",
        long_clip="windows",
    )  # fmt: skip (eager: countable matmuls)
    lengths = (3000, 100, 3500)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for m in lengths:
            io.family.reference_forward(io.encoder, torch.zeros(1, m, io.n_mels), torch.tensor([m]))
    assert io.family.flops(io.encoder.config, torch.tensor(lengths)) == counter.get_total_flops()


def test_lm_dummy_forward_reaches_the_projector() -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN2_AUDIO, weights="random", dtype="float32")
    io.encoder.requires_grad_(True)
    out = io.dummy_forward(torch.zeros(1, dtype=torch.float64))
    assert out.shape[-1] == io.feature_dim() == 48
    (0.0 * out.sum()).backward()
    assert io.encoder.multi_modal_projector.linear.weight.grad is not None
    assert not [name for name, p in io.encoder.named_parameters() if p.grad is None]


# ------------------------------------------------------------------ returns="hidden_states"
HIDDEN_LAYERS = ([0, -1], [1], [2, 0])  # the tiny tower has 2 layers: entries 0..2
HIDDEN_SAMPLES = [2 * HOP, 3 * HOP + 1, 5 * SR + 77, WINDOW_SAMPLES, LONG_SAMPLES[0]]


def hidden_io(directory, layers: list[int]) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows", returns="hidden_states", layers=layers)  # fmt: skip


def hf_model_hidden_states(hf_model, features: torch.Tensor, frames: int, layers, tie: bool) -> torch.Tensor:
    """The whole model's tower hidden states in :func:`run_hf_model` (``output_hidden_states`` from its config, as
    ``capture_outputs`` reads it; ``tie``: transformers' default of tying the last entry to ``last_hidden_state``),
    entries ``layers`` ``[L, k, R, d]``, before any row selection."""
    tower = hf_model.model.audio_tower
    captured = []
    hook = tower.register_forward_hook(lambda _m, _args, out: captured.append(out.hidden_states))
    tower.config.output_hidden_states, tower.config.tie_last_hidden_states = True, tie
    try:
        run_hf_model(hf_model, features, frames)
    finally:
        tower.config.output_hidden_states, tower.config.tie_last_hidden_states = False, None
        hook.remove()
    (states,) = captured
    picked = [states[i] for i in layers]
    if not tie and any(state.shape != states[0].shape for state in picked):  # transformers < 5.25: always tied
        pytest.skip(f"transformers {transformers.__version__} ties the last hidden state to the pooled "
                    "last_hidden_state whatever config.tie_last_hidden_states says (5.25 reads it): HF's whole model "
                    "has no per-row last entry here to compare with")  # fmt: skip
    return picked


def hidden_checks(io: ContinuousAudioIO, hf_model, wavs: list[np.ndarray], rng) -> list[str]:
    """The hidden states of a noise-padded batch (find_length, preprocess, encode_batch) against the family's oracle
    and HF's whole model (its tower's hidden states with the last entry untied, HF's conv rows) for each clip alone,
    and the verdicts of length_check and mask_check. Every way they differ; [] when all agree."""
    processed = [io.preprocess((wav, SR))[1] for wav in wavs]
    mel, lengths = noise_padded_batch([m for _, m in processed], PADDING_EXTRA, rng)
    found = []
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
    for wav, (rows, _), ours in zip(wavs, processed, outs, strict=True):
        features, frames = hf_extract(wav, padding="longest", pad_to_multiple_of=WINDOW_SAMPLES, truncation=False)
        states = torch.stack(hf_model_hidden_states(hf_model, features, frames, io.layers, tie=False))
        conv_rows, _ = hf_model.model.audio_tower._get_feat_extract_output_lengths(window_frames_of(frames))
        theirs = window_rows_of(states, conv_rows)
        length, mask = checks(io, wav)
        found += [f"{len(wav)} samples: {reason}" for reason in (*length.reasons, *mask.reasons)]
        counts = {"find_length": io.find_length(len(wav)), "preprocess": rows, "encode_batch": ours.shape[-2],
                  "HF's model": theirs.shape[-2]}  # fmt: skip
        if len(set(counts.values())) > 1:
            found.append(f"{len(wav)} samples: rows differ: {counts}")
        elif ours.shape != theirs.shape or (ours.numel() and float((ours - theirs).abs().max()) > ATOL):
            found.append(f"{len(wav)} samples: encode_batch differs from HF's model")
    return found


@pytest.mark.parametrize("layers", HIDDEN_LAYERS, ids=str)
def test_hidden_states_are_hfs_for_each_clip_alone(tiny_qwen2_audio_checkpoint, rng, layers: list[int]) -> None:
    directory, model = tiny_qwen2_audio_checkpoint
    io = hidden_io(directory, layers)
    assert io.feature_dim() == 32 and io.find_length(SR) == 50  # 50 Hz: conv rows, before the average pool
    assert not hidden_checks(io, model, [clip(rng, n) for n in HIDDEN_SAMPLES], rng)


def test_hidden_states_build_only_the_layers_asked_for(tiny_qwen2_audio_checkpoint) -> None:
    directory, _ = tiny_qwen2_audio_checkpoint
    for layers, built in (([0], 1), ([1], 1), ([-1, 0], 2)):
        io = hidden_io(directory, layers)
        assert len(io.encoder.layers) == built, layers
        assert isinstance(io.encoder.avg_pooler, nn.Identity) and isinstance(io.encoder.layer_norm, nn.Identity)


def test_hfs_own_last_entry_is_the_pooled_last_hidden_state(tiny_qwen2_audio_checkpoint, rng) -> None:
    """Why contaudio's last entry is untied: HF (tie on, its default) gives 750 rows per window there, the pooled and
    normed ``last_hidden_state``, not one per conv row; the oracle refuses that on a whole tower, saying so."""
    _, model = tiny_qwen2_audio_checkpoint
    features, frames = hf_extract(clip(rng, 5 * SR), padding="max_length")
    tied, below = hf_model_hidden_states(model, features, frames, (-1, -2), tie=True)
    assert tied.shape[1] == 750 and below.shape[1] == 1500
    windows, window_frames = hf_windows(features, torch.tensor([frames]), WINDOW_FRAMES)
    with torch.inference_mode(), pytest.raises(ValueError, match="ties its last hidden state"):
        qwen2_audio.hf_forward_hidden_states(model.model.audio_tower, windows, window_frames, (2,))


def moved_layer_output(original):
    """HF's encoder layer (which contaudio's packed stack does not call) with its output moved."""
    return lambda self, *args, **kwargs: original(self, *args, **kwargs) + PERTURBATION


def fewer_conv_rows(original):
    """HF's length helper counting one conv row fewer (the mask and the rows HF keeps follow it)."""

    def helper(self, input_lengths):
        conv_rows, output_rows = original(self, input_lengths)
        return (conv_rows - 1).clamp(min=1), output_rows

    return helper


HIDDEN_HF_FAULTS = {
    "HF's layer output moved": (Qwen2AudioEncoderLayer, "forward", moved_layer_output),
    "HF's helper counts a conv row fewer": (Qwen2AudioEncoder, "_get_feat_extract_output_lengths", fewer_conv_rows),
    "HF's forward raises": (Qwen2AudioModel, "forward", raising),
}


@pytest.mark.parametrize("fault", HIDDEN_HF_FAULTS)
def test_hidden_state_checks_fail_when_hfs_side_breaks(tiny_qwen2_audio_checkpoint, rng, monkeypatch,
                                                       fault: str) -> None:  # fmt: skip
    directory, _ = tiny_qwen2_audio_checkpoint
    io = hidden_io(directory, [2, 1])
    owner, name, broken = HIDDEN_HF_FAULTS[fault]
    monkeypatch.setattr(owner, name, broken(getattr(owner, name)))
    length, mask = checks(io, clip(rng, FAULT_SAMPLES[0]))
    assert not mask.passed, mask.reasons
    assert length.passed == (fault == "HF's layer output moved"), length.reasons


def one_hidden_row_more(tower) -> dict:
    """The tower's hidden-state rule and forward giving one row more per clip, consistently (contaudio then agrees
    with itself, and only HF can tell): the rule + 1, each clip's last row repeated."""
    honest_rows, honest_forward = tower.hidden_rows, tower.hidden_forward

    def hidden_rows(mel_len):
        base = honest_rows(mel_len)
        return base + (base > 0) if isinstance(base, torch.Tensor) else base + int(base > 0)

    def hidden_forward(encoder, mel, lengths, layers):
        clips = honest_forward(encoder, mel, lengths, layers).split(honest_rows(lengths.cpu()).tolist(), dim=1)
        return torch.cat([torch.cat([c, c[:, -1:]], dim=1) for c in clips], dim=1)

    return {"hidden_rows": hidden_rows, "hidden_forward": hidden_forward}


def test_hidden_state_checks_fail_when_our_side_breaks(tiny_qwen2_audio_checkpoint, rng, monkeypatch) -> None:
    directory, _ = tiny_qwen2_audio_checkpoint
    io = hidden_io(directory, [2, 1])
    wav = clip(rng, FAULT_SAMPLES[0])
    with monkeypatch.context() as patch:
        for name, method in one_hidden_row_more(io.family.tower).items():
            patch.setattr(io.family.tower, name, method)
        length, mask = checks(io, wav)
        assert not length.passed and length.reasons == ("HF gave 251 rows, contaudio 252",), length.reasons
        assert not mask.passed
    hidden = qwen2_audio.masked_hidden_states
    monkeypatch.setattr(qwen2_audio, "masked_hidden_states", lambda *a, **k: hidden(*a, **k) + PERTURBATION)
    length, mask = checks(io, wav)
    assert length.passed and any("differs from HF" in reason for reason in mask.reasons), mask.reasons
