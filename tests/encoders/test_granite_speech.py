"""Granite Speech audio tower: the length rule, the packed forward against HF's own model path, loading, and the
``returns=`` modes (``"lm"`` = ``"tower"`` against ``GraniteSpeechProcessor``'s placeholder count; ``"hidden_states"``
against HF's ``output_hidden_states``).

The reference is ``GraniteSpeechModel.get_audio_features`` on each clip ALONE: HF's model has no padding
mask, so its batched call lets a shorter clip read the batch's padding (shown here too). Checked against
it: clips across attention-block, conv and projector-window edges, other block sizes and an even conv
kernel (asymmetric padding), bf16, gradients, training-mode batch norm, and loading the tower from a
checkpoint whose keys carry the model's ``model.`` prefix. Each mode's comparison is also seen failing with a fault
injected on our side and on HF's. What every family shares (loading from a whole
transformers checkpoint, oracle, lengths, padded batches, mutations, FLOPs vs torch) is in
``test_families.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import clips_and_batch, random_padded_batch
from helpers.checkpoints import TINY_GRANITE_SPEECH, assert_holds_tower, perturb_, save_tiny_granite_speech
from safetensors.torch import save_file
from transformers.models.granite_speech import feature_extraction_granite_speech as hf_features
from transformers.models.granite_speech.configuration_granite_speech import GraniteSpeechConfig
from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechConformerBlock, GraniteSpeechModel

import contaudio.encoders.granite_speech as granite
from contaudio import ContinuousAudioIO
from contaudio.encoders import find_card, get_family
from contaudio.encoders.granite_speech import (
    PROJECTOR_QUERIES,
    PROJECTOR_WINDOW,
    GraniteSpeechAudioTower,
    GraniteSpeechHiddenStates,
    granite_speech_rows,
    hf_placeholder_count,
    packed_forward,
)
from contaudio.features import torchaudio_mel

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = get_family("granite_speech")
ATOL = 1e-5  # fp32, same weights: only kernels and summation order differ (measured ~1e-6)
LOW_PRECISION_FACTOR = 1.1  # packed bf16 error vs fp32 may be at most 1.1x HF's own
GRAD_TOLERANCE = 1e-10  # float64 gradients, relative to the largest entry
N_MELS = 160
# 1 frame, projector-window edges (15), attention-block edges (40 on the tiny card), several blocks and windows
LENGTHS = [1, 2, 14, 15, 16, 39, 40, 41, 79, 80, 233]
VARIANTS = {"tiny card": {}, "one 200-frame block": {"context_size": 200, "max_pos_emb": 256},
            "even conv kernel": {"conv_kernel_size": 4}, "3 blocks": {"num_layers": 3}}  # fmt: skip


def build(overrides: dict | None = None, dtype: torch.dtype = torch.float32) -> GraniteSpeechAudioTower:
    """A random tower from the tiny card (encoder config overridden), weights perturbed so biases are non-zero."""
    raw = {key: value for key, value in find_card(TINY_GRANITE_SPEECH).encoder_config.items() if key != "model_type"}
    raw["encoder_config"] = {**raw["encoder_config"], **(overrides or {})}
    torch.manual_seed(0)
    tower = GraniteSpeechAudioTower(GraniteSpeechConfig(**raw))
    perturb_(tower, seed=1)
    return tower.to(dtype).eval()


def hf_alone(tower: torch.nn.Module, mel: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """HF's get_audio_features on each clip alone: ``[rows, D]`` per clip."""
    return [
        GraniteSpeechModel.get_audio_features(tower, mel[i : i + 1, :m]).pooler_output[0] for i, m in enumerate(lengths)
    ]


def test_rows_rule_int_and_tensor_for_every_length() -> None:
    lengths = torch.arange(0, 3001)
    as_ints = [granite_speech_rows(m) for m in lengths.tolist()]
    assert granite_speech_rows(lengths).tolist() == as_ints
    assert all(isinstance(r, int) for r in as_ints) and granite_speech_rows(lengths).dtype == torch.long
    assert as_ints[:16] == [0] + [PROJECTOR_QUERIES] * PROJECTOR_WINDOW and as_ints[1500] == 300  # 30 s: 300 rows


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_batch_equals_hf_on_each_clip_alone(variant: str) -> None:
    tower = build(VARIANTS[variant])
    mel, lengths = random_padded_batch(LENGTHS, n_mels=N_MELS)
    with torch.inference_mode():
        ours = packed_forward(tower, mel, lengths).split([granite_speech_rows(m) for m in LENGTHS])
        for m, got, reference in zip(LENGTHS, ours, hf_alone(tower, mel, LENGTHS), strict=True):
            torch.testing.assert_close(got, reference, atol=ATOL, rtol=0, msg=f"{variant}: {m} frames")


def test_hfs_own_batched_call_reads_the_padding_of_a_shorter_clip() -> None:
    """Why the clip alone is the reference: HF's batched call gives a short clip other rows (no padding mask)."""
    tower = build()
    mel, lengths = random_padded_batch([233, 50], n_mels=N_MELS)
    with torch.inference_mode():
        batched = FAMILY.reference_forward(tower, mel, lengths)  # one HF call, rows by the processor's count
        short_alone = hf_alone(tower, mel, [233, 50])[1]
        ours = packed_forward(tower, mel, lengths)
    assert float((batched[-len(short_alone) :] - short_alone).abs().max()) > 1e-2
    torch.testing.assert_close(ours[-len(short_alone) :], short_alone, atol=ATOL, rtol=0)


def test_bf16_error_is_no_larger_than_hfs_own() -> None:
    reference, low = build(), build(dtype=torch.bfloat16)
    mel, lengths = random_padded_batch(LENGTHS, n_mels=N_MELS)
    with torch.inference_mode():
        exact = torch.cat(hf_alone(reference, mel, LENGTHS))
        ours = packed_forward(low, mel.bfloat16(), lengths).float()
        hf = torch.cat(hf_alone(low, mel.bfloat16(), LENGTHS)).float()
    assert float((ours - exact).abs().max()) <= LOW_PRECISION_FACTOR * float((hf - exact).abs().max())


def test_gradients_equal_hfs_alone_in_float64() -> None:
    tower = build(dtype=torch.float64)
    mel, lengths = random_padded_batch([80, 33], n_mels=N_MELS)
    mel = mel.double()
    weights = torch.randn(sum(granite_speech_rows(m) for m in (80, 33)), tower.config.text_config.hidden_size,
                          dtype=torch.float64, generator=torch.Generator().manual_seed(2))  # fmt: skip
    grads = []
    for run in (lambda: packed_forward(tower, mel, lengths), lambda: torch.cat(hf_alone(tower, mel, [80, 33]))):
        tower.zero_grad()
        (run() * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in tower.parameters() if p.grad is not None]))
    ours, hf = grads
    assert ours.shape == hf.shape and float((ours - hf).abs().max()) <= GRAD_TOLERANCE * max(1.0, float(hf.abs().max()))


def test_training_mode_batch_norm_sees_only_real_frames() -> None:
    """In training, HF's batch norm takes statistics over whatever it is given; ours over the batch's real
    frames: a clip alone (HF's reference) and the same clip padded in a batch of one agree."""
    tower = build({"dropout": 0.0})
    tower.projector.qformer.train(False)
    tower.encoder.train()
    mel, lengths = random_padded_batch([233], n_mels=N_MELS)
    with torch.no_grad():
        ours = packed_forward(tower, mel, lengths)
        (reference,) = hf_alone(tower, mel, [233])
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


def test_other_projector_windows_are_refused() -> None:
    tower = build()
    tower.projector.window_size = 10
    with pytest.raises(ValueError, match="window_size=10"):
        packed_forward(tower, torch.zeros(1, 20, N_MELS), torch.tensor([20]))


def test_loads_the_tower_from_model_prefixed_keys_and_nothing_else(tmp_path) -> None:
    """A checkpoint stored with the module names (``model.encoder.*``, ``model.projector.*``) next to the LM."""
    tower = build()
    config = {**find_card(TINY_GRANITE_SPEECH).encoder_config, "text_config": {"model_type": "granite",
              "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = {f"model.{key}": value.contiguous() for key, value in tower.state_dict().items()}
    state["model.language_model.embed_tokens.weight"] = torch.zeros(4, 32)
    save_file(state, tmp_path / "model.safetensors")
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    assert io.family is FAMILY and io.feature_dim() == 32
    assert_holds_tower(io, tower.state_dict())


def test_oracle_runs_hfs_extractor_on_torchaudio_or_on_a_stand_in_for_the_call_only(rng) -> None:
    """Where torchaudio is installed (ESPnet's environment) the oracle's HF extractor is torchaudio's own
    MelSpectrogram; elsewhere contaudio's stand-in, installed only while the oracle runs. HF's extractor module
    is the same object for object before and after, also after an oracle call HF refuses (too short a clip)."""
    tower, extractor = build(), FAMILY.default_features.hf_extractor()
    if torchaudio_mel.stand_in_needed():
        assert isinstance(extractor.mel_filters, torchaudio_mel.MelSpectrogram)
    else:
        torchaudio = pytest.importorskip("torchaudio")
        assert type(extractor.mel_filters) is torchaudio.transforms.MelSpectrogram
    before = dict(vars(hf_features))
    with torch.inference_mode():
        answer = FAMILY.oracle(tower, extractor, noise(rng, 16000))
        refused = FAMILY.oracle(tower, extractor, noise(rng, FAMILY.default_features.min_samples - 1))
    assert answer.error is None and answer.rows.shape[0] == granite_speech_rows(FAMILY.default_features.frames(16000))
    assert refused.error is not None
    after = dict(vars(hf_features))
    assert after.keys() == before.keys() and all(after[key] is before[key] for key in before)


# ------------------------------------------------------------------------ returns="lm" (= "tower"): placeholders
HIDDEN_DIM = 32  # the tiny card's encoder_config.hidden_dim
LM_WIDTH = 32  # the tiny card's text_config.hidden_size
MIN_SAMPLES = FAMILY.default_features.min_samples  # 257: HF's extractor (torchaudio's reflect padding) needs them
# samples at the 257-sample minimum, at 1/2/15/16/30/31-frame edges ((N // 160 + 1) // 2 frames; 15 frames fill a
# projector window, 16 start the next), 1 s and beyond, clips of several 40-frame attention blocks
PLACEHOLDER_SAMPLES = [MIN_SAMPLES, 258, 319, 320, 479, 480, 4639, 4640, 4799, 4800, 4959, 4960, 5119, 9759, 9760,
                       16000, 16001, 40000]  # fmt: skip
RANDOM_SAMPLES = 6  # and a few seeded random sample counts up to 5 s


def tiny_io(**kwargs) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_GRANITE_SPEECH, weights="random", dtype="float32", **kwargs)


@pytest.fixture(scope="module")
def lm() -> tuple[ContinuousAudioIO, list[np.ndarray], list, torch.Tensor, torch.Tensor]:
    io = tiny_io(returns="lm")
    extra = np.random.default_rng(3).integers(MIN_SAMPLES, 5 * io.sample_rate, RANDOM_SAMPLES).tolist()
    return io, *clips_and_batch(io, PLACEHOLDER_SAMPLES + extra)


def test_lm_rows_number_the_processors_placeholders(lm) -> None:
    """Per clip of a noise-padded batch: find_length == preprocess's T == encode_batch's rows == the rows of HF's
    get_audio_features for the clip alone == the placeholders GraniteSpeechProcessor writes for it, values equal."""
    io, wavs, pre, mel, lengths = lm
    assert io.family is FAMILY and io.returns == "lm" and io.feature_dim() == LM_WIDTH
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, p, out in zip(wavs, pre, outs, strict=True):
            oracle = io.family.oracle(io.encoder, extractor, wav)
            assert oracle.error is None, (len(wav), oracle.error)
            assert io.find_length(len(wav)) == p[1][0] == out.shape[0] == oracle.count == oracle.placeholders, len(wav)
            torch.testing.assert_close(out, oracle.rows, atol=ATOL, rtol=0, msg=f"{len(wav)} samples")
    counts = [p[1][0] for p in pre]
    assert counts[:2] == [PROJECTOR_QUERIES] * 2 and {3 * PROJECTOR_QUERIES, 4 * PROJECTOR_QUERIES} <= set(counts)


def test_clips_below_the_minimum_are_refused_by_us_and_by_hfs_processor(rng) -> None:
    """256 samples: find_length, preprocess and HF's processor all refuse (no placeholder count to budget)."""
    io, wav = tiny_io(skip_init_encoder=True), noise(rng, MIN_SAMPLES - 1)
    with pytest.raises(ValueError, match=str(MIN_SAMPLES)):
        io.find_length(len(wav))
    with pytest.raises(ValueError, match=str(MIN_SAMPLES)):
        io.preprocess((wav, io.sample_rate))
    with pytest.raises(Exception):  # noqa: B017 (torch's reflect padding error, whatever its type)
        hf_placeholder_count(io.features.hf_extractor(), wav)


def test_lm_rule_off_by_one_is_seen(monkeypatch, lm) -> None:
    """Our side: a rule one window off budgets other than the processor's placeholders, and encode_batch refuses."""
    io, wavs, _, mel, lengths = lm
    with torch.inference_mode():
        oracle = io.family.oracle(io.encoder, io.features.hf_extractor(), wavs[0])
    off_by_one = staticmethod(lambda m: granite_speech_rows(m) + PROJECTOR_QUERIES)
    monkeypatch.setattr(granite.GraniteSpeech, "rows", off_by_one)
    assert io.find_length(len(wavs[0])) == io.preprocess((wavs[0], io.sample_rate))[1][0] != oracle.placeholders
    with pytest.raises(RuntimeError, match="length rule"), torch.inference_mode():
        io.encode_batch(mel, lengths)


def test_hfs_placeholder_faults_are_seen(monkeypatch, lm) -> None:
    """HF's side: the extractor's count helper (the processor's ``audio_embed_sizes``) one off, the processor's
    placeholder expansion one token long, and HF's projector answering other values: each shows in the oracle."""
    io, wavs, _, mel, lengths = lm
    extractor = io.features.hf_extractor()
    wav = wavs[-RANDOM_SAMPLES - 1]  # 40000 samples
    with torch.inference_mode():
        ours = io.encode_batch(mel, lengths)[-RANDOM_SAMPLES - 1]
        helper = hf_features.GraniteSpeechFeatureExtractor._get_num_audio_features
        with monkeypatch.context() as patch:
            patch.setattr(hf_features.GraniteSpeechFeatureExtractor, "_get_num_audio_features",
                          lambda self, lengths: [n + 1 for n in helper(self, lengths)])  # fmt: skip
            assert io.family.oracle(io.encoder, extractor, wav).placeholders == ours.shape[0] + 1
        replace = vars(granite.GraniteSpeechProcessor).get("replace_audio_token")
        if replace is not None:  # 5.25 expands the placeholders here (5.14.1 inline in __call__, from the helper)
            with monkeypatch.context() as patch:
                patch.setattr(granite.GraniteSpeechProcessor, "replace_audio_token",
                              lambda self, *a, **k: replace(self, *a, **k) + self.audio_token)  # fmt: skip
                answer = io.family.oracle(io.encoder, extractor, wav)
                assert answer.placeholders == answer.count + 1 == ours.shape[0] + 1
        projector = type(io.encoder.projector).forward
        with monkeypatch.context() as patch:
            patch.setattr(type(io.encoder.projector), "forward", lambda *a: projector(*a) * 1.01)
            assert float((io.family.oracle(io.encoder, extractor, wav).rows - ours).abs().max()) > 100 * ATOL


# ---------------------------------------------------------------------------------------- returns="hidden_states"
HIDDEN_SAMPLES = [16000, MIN_SAMPLES, 4959, 4960, 40000]  # 50, 1, 15, 16, 125 frames (125: four attention blocks)
LAYER_SETS = [[0], [-1], [1], [2, 0, 1], [0, -1]]


def hf_block_outputs(encoder: torch.nn.Module, features: torch.Tensor) -> list[torch.Tensor]:
    """HF's own encoder run block by block by hand, from its modules: each block's output and that output plus the
    CTC feedback (after the middle block), for telling which of the two HF records."""
    hidden = encoder.input_linear(features)
    outputs = []
    for index, layer in enumerate(encoder.layers, start=1):
        hidden = layer(hidden, attention_dists=encoder.attention_dists)
        outputs.append(hidden)
        if index == encoder.num_layers // 2:
            hidden = hidden + encoder.out_mid(torch.softmax(encoder.out(hidden), dim=-1))
            outputs[-1] = (outputs[-1], hidden)
    return outputs


@pytest.mark.parametrize("layers", LAYER_SETS, ids=str)
def test_hidden_states_equal_hfs_per_layer(layers: list[int]) -> None:
    """Per clip [len(layers), T, hidden_dim], T = find_length = preprocess's T = HF's rows (one per 20 ms frame),
    each clip of a noise-padded batch equal to HF's hidden states of the clip alone; only the blocks up to the
    deepest one requested are kept (at least one, which HF's forward needs to record hidden state 0), the projector
    is an identity."""
    io = tiny_io(returns="hidden_states", layers=layers)
    assert isinstance(io.family, GraniteSpeechHiddenStates) and io.feature_dim() == HIDDEN_DIM
    assert len(io.encoder.encoder.layers) == max(*io.layers, 1) and isinstance(io.encoder.projector, torch.nn.Identity)
    wavs, pre, mel, lengths = clips_and_batch(io, HIDDEN_SAMPLES)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, p, out in zip(wavs, pre, outs, strict=True):
            oracle = io.family.oracle(io.encoder, extractor, wav)
            assert oracle.error is None and oracle.placeholders is None, oracle.error
            assert out.shape == (len(layers), p[1][0], HIDDEN_DIM)
            assert oracle.count == io.find_length(len(wav)) == p[1][0] == FAMILY.default_features.frames(len(wav))
            torch.testing.assert_close(out, oracle.rows, atol=ATOL, rtol=0, msg=f"{len(wav)} samples")


@pytest.mark.parametrize("variant", [*VARIANTS, "4 blocks"])
def test_hidden_forward_equals_hf_on_each_clip_alone(variant: str) -> None:
    """Every hidden state (0..num_layers) of every clip of a garbage-padded batch equals HF's for the clip alone,
    for other block sizes, an even conv kernel and 3 and 4 blocks (the feedback after block 1, resp. 2)."""
    tower = build({"num_layers": 4} if variant == "4 blocks" else VARIANTS[variant])
    layers = tuple(range(tower.config.encoder_config.num_layers + 1))
    mel, lengths = random_padded_batch(LENGTHS, n_mels=N_MELS)
    with torch.inference_mode():
        ours = FAMILY.hidden_forward(tower, mel, lengths, layers).split(LENGTHS, dim=1)
        for i, (m, got) in enumerate(zip(LENGTHS, ours, strict=True)):
            reference = FAMILY.hf_hidden_states(tower, mel[i : i + 1, :m], torch.tensor([m]), layers)
            torch.testing.assert_close(got, reference, atol=ATOL, rtol=0, msg=f"{variant}: {m} frames")


@pytest.mark.parametrize("num_layers", [2, 3, 4])
def test_middle_hidden_state_holds_the_ctc_feedback(num_layers: int) -> None:
    """HF records block ``num_layers // 2``'s output and then adds the CTC head's softmax feedback to that very tensor
    (in place): its hidden state there is the block's output plus the feedback, the next block's input; ours too."""
    tower = build({"num_layers": num_layers})
    mel, lengths = random_padded_batch([80], extra=0, n_mels=N_MELS)
    middle = num_layers // 2
    with torch.inference_mode():
        hf = FAMILY.hf_hidden_states(tower, mel, lengths, (middle,))[0]
        ours = FAMILY.hidden_forward(tower, mel, lengths, (middle,))[0]
        block_output, with_feedback = hf_block_outputs(tower.encoder, mel)[middle - 1]
    torch.testing.assert_close(hf, with_feedback[0], atol=0, rtol=0)
    assert float((hf - block_output[0]).abs().max()) > 100 * ATOL
    torch.testing.assert_close(ours, hf, atol=ATOL, rtol=0)


def test_hidden_states_faults_are_seen(monkeypatch) -> None:
    """Ours skipping a block, ours dropping the CTC feedback and our row rule one off; HF's block answering other
    values and HF's block dropping a row: each makes the comparison fail."""
    io = tiny_io(returns="hidden_states", layers=[1, -1])
    wavs, _, mel, lengths = clips_and_batch(io, HIDDEN_SAMPLES)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        good = io.encode_batch(mel, lengths)[0]
        oracle = io.family.oracle(io.encoder, extractor, wavs[0])
        torch.testing.assert_close(good, oracle.rows, atol=ATOL, rtol=0)
        with monkeypatch.context() as patch:  # ours: a block never runs
            patch.setattr(granite, "conformer_block", lambda layer, hidden, *a: hidden)
            assert float((io.encode_batch(mel, lengths)[0] - oracle.rows).abs().max()) > 100 * ATOL
        with monkeypatch.context() as patch:  # ours: the CTC feedback after the middle block left out
            patch.setattr(io.encoder.encoder, "num_layers", 0)  # our forward reads it; HF's does too, so compare first
            skipped = io.encode_batch(mel, lengths)[0]
        assert float((skipped[0] - oracle.rows[0]).abs().max()) > 100 * ATOL
        with monkeypatch.context() as patch:  # ours: one row too many per clip
            patch.setattr(granite.GraniteSpeech, "hidden_rows", lambda self, m: m + 1)
            assert io.find_length(len(wavs[0])) == oracle.count + 1
        block = GraniteSpeechConformerBlock.forward
        with monkeypatch.context() as patch:  # HF's: its blocks give other values
            patch.setattr(GraniteSpeechConformerBlock, "forward", lambda *a, **k: block(*a, **k) * 1.01)
            assert float((io.family.oracle(io.encoder, extractor, wavs[0]).rows - good).abs().max()) > 100 * ATOL
        last = io.encoder.encoder.layers[-1]
        with monkeypatch.context() as patch:  # HF's: its last block drops a row (the oracle then sees states of
            patch.setattr(GraniteSpeechConformerBlock, "forward",  # two lengths and records HF's answer as an error)
                          lambda self, *a, **k: block(self, *a, **k)[:, : -1 if self is last else None])  # fmt: skip
            answer = io.family.oracle(io.encoder, extractor, wavs[0])
            assert answer.count is None and "size" in answer.error


def test_hidden_states_of_a_saved_model_are_the_full_models(tmp_path) -> None:
    """A whole GraniteSpeechForConditionalGeneration saved (sharded, with its LM): returns='hidden_states' loads
    the blocks it keeps from it, and gives, per clip, the hidden states the full model's own get_audio_features
    records for the clip alone."""
    model = save_tiny_granite_speech(tmp_path)
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32",
                           returns="hidden_states", layers=[0, 1])  # fmt: skip
    assert len(io.encoder.encoder.layers) == 1 and io.feature_dim() == HIDDEN_DIM
    wavs, _, mel, lengths = clips_and_batch(io, HIDDEN_SAMPLES)
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, out in zip(wavs, outs, strict=True):
            features, _ = FAMILY.hf_inputs(extractor, wav)
            states = model.model.get_audio_features(features, output_hidden_states=True).hidden_states
            torch.testing.assert_close(out, torch.cat(states[:2]), atol=ATOL, rtol=0, msg=f"{len(wav)} samples")


def test_hidden_states_layer_zero_and_dummy_forward() -> None:
    """layers=[0]: input_linear's rows; the one block kept (for HF's forward) is no trainable weight of ours;
    dummy_forward gives [1, rows, hidden_dim] in the reference dtype; a 0-frame clip gives [1, 0, hidden_dim]."""
    io = tiny_io(returns="hidden_states", layers=[0])
    assert not [name for name, _ in io.encoder.named_parameters() if name.startswith("encoder.layers.")]
    out = io.dummy_forward(torch.zeros(1, dtype=torch.float16))
    assert out.shape[0] == 1 and out.shape[2] == HIDDEN_DIM and out.dtype == torch.float16
    assert io.encode_batch(torch.zeros(1, 4, N_MELS), torch.tensor([0]))[0].shape == (1, 0, HIDDEN_DIM)


def test_hidden_states_layers_past_the_stack_are_refused() -> None:
    with pytest.raises(ValueError, match="2 layers"):
        tiny_io(returns="hidden_states", layers=[3], skip_init_encoder=True)
