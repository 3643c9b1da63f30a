"""Tiny checkpoints built and saved by transformers itself (full models, sharded), from the shipped tiny cards.

Every builder perturbs the weights (non-zero biases, non-identity norms) so padding leaks show.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TINY_QWEN_OMNI = "contaudio/tiny-qwen2.5-omni"
TINY_QWEN3_OMNI = "contaudio/tiny-qwen3-omni"
TINY_QWEN2_AUDIO = "contaudio/tiny-qwen2-audio"
TINY_WHISPER = "contaudio/tiny-whisper"
TINY_VOXTRAL = "contaudio/tiny-voxtral"
TINY_GRANITE_SPEECH = "contaudio/tiny-granite-speech"
TINY_PHI4_MULTIMODAL = "contaudio/tiny-phi4-multimodal"
TINY_QWEN3_ASR = "contaudio/tiny-qwen3-asr"
TINY_AUDIOFLAMINGO3 = "contaudio/tiny-audioflamingo3"
TINY_GLMASR = "contaudio/tiny-glmasr"
TINY_GEMMA3N = "contaudio/tiny-gemma3n"


TINY_TEXT = {"vocab_size": 160, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
TINY_AUDIO_TOKEN = 7  # an id inside the tiny vocabulary


def card_encoder_config(tag: str) -> dict:
    """A shipped card's encoder config without its model_type, for building full checkpoints around it."""
    from contaudio.encoders import find_card

    config = dict(find_card(tag).encoder_config)
    config.pop("model_type")
    return config


def tiny_audio_config() -> dict:
    """The tiny card's Qwen2.5-Omni audio config, for building full checkpoints around it."""
    return card_encoder_config(TINY_QWEN_OMNI)


def card_extractor(tag: str):
    """HF's own extractor class (the card's ``feature_extractor_type``) configured exactly as the card says."""
    import transformers

    from contaudio.encoders import find_card
    from contaudio.features.torchaudio_mel import torchaudio_for_hf_granite_speech

    raw = dict(find_card(tag).feature_extractor)
    extractor_class = getattr(transformers, raw.pop("feature_extractor_type", "WhisperFeatureExtractor"))
    with torchaudio_for_hf_granite_speech():  # Granite's needs torchaudio: contaudio's stand-in where it is missing
        return extractor_class(**raw)


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Add N(0, scale) noise to every parameter, biases included.

    HF's init leaves biases at zero; real checkpoints do not, and with zero
    biases an all-zero padded input stays zero through a conv, which hides
    padding leaks. Tiny checkpoints are perturbed so such leaks show.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def perturbed(build: Callable[[], torch.nn.Module], init_seed: int, seed: int) -> torch.nn.Module:
    """``build()`` under ``torch.manual_seed(init_seed)``, then :func:`perturb_` with ``seed``."""
    torch.manual_seed(init_seed)
    model = build()
    perturb_(model, seed=seed)
    return model


def save_with_features(model: torch.nn.Module, directory, card: str, max_shard_size: str) -> torch.nn.Module:
    """Save ``model`` sharded by transformers with the card's own extractor config; returns it in eval mode."""
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    card_extractor(card).save_pretrained(directory)
    return model.eval()


def save_tiny_qwen3_omni(directory, *, thinker_only: bool = False, max_shard_size: str = "40KB"):
    """Save a tiny random FULL Qwen3-Omni (or thinker-only) model, sharded, with its feature config."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeThinkerConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerForConditionalGeneration

    text = {**TINY_TEXT, "moe_intermediate_size": 32, "num_experts": 2, "num_experts_per_tok": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}}  # fmt: skip
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
              "deepstack_visual_indexes": [0]}  # fmt: skip
    thinker = {"audio_config": card_encoder_config(TINY_QWEN3_OMNI), "text_config": text, "vision_config": vision}
    torch.manual_seed(4321)
    if thinker_only:
        model = Qwen3OmniMoeThinkerForConditionalGeneration(Qwen3OmniMoeThinkerConfig(**thinker))
    else:
        model = Qwen3OmniMoeForConditionalGeneration(
            Qwen3OmniMoeConfig(thinker_config=thinker, enable_audio_output=False)
        )
    perturb_(model, seed=1)
    return save_with_features(model, directory, TINY_QWEN3_OMNI, max_shard_size)


def save_tiny_qwen2_audio(directory, *, encoder_only: bool = False, max_shard_size: str = "40KB"):
    """Save a tiny random FULL Qwen2-Audio model (or its bare audio encoder), with its feature config."""
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoder, Qwen2AudioForConditionalGeneration
    from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioEncoderConfig

    audio = card_encoder_config(TINY_QWEN2_AUDIO)
    torch.manual_seed(4322)
    if encoder_only:
        model = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**audio))
    else:
        config = Qwen2AudioConfig(
            audio_config={"model_type": "qwen2_audio_encoder", **audio},
            text_config={"model_type": "qwen2", **TINY_TEXT},
            audio_token_index=TINY_AUDIO_TOKEN,
        )
        model = Qwen2AudioForConditionalGeneration(config)
    perturb_(model, seed=2)
    return save_with_features(model, directory, TINY_QWEN2_AUDIO, max_shard_size)


def save_tiny_whisper(directory, *, max_shard_size: str = "10GB"):
    """Save a tiny random FULL Whisper (encoder-decoder) model with its feature config (one file by default)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        **card_encoder_config(TINY_WHISPER), vocab_size=100, decoder_layers=1, decoder_attention_heads=2,
        decoder_ffn_dim=64, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    model = perturbed(lambda: WhisperForConditionalGeneration(config), init_seed=4323, seed=3)
    return save_with_features(model, directory, TINY_WHISPER, max_shard_size)


def save_tiny_audio_lm(
    directory,
    card: str,
    model_name: str,
    audio_type: str,
    text_type: str,
    seed: int,
    max_shard_size: str = "40KB",
    **text_overrides,
):
    """Save a tiny random FULL ``<model_name>ForConditionalGeneration`` (the card's audio tower + projector + a
    ``text_type`` LM), sharded by transformers, with the card's own extractor config."""
    import transformers

    config = getattr(transformers, f"{model_name}Config")(
        audio_config={"model_type": audio_type, **card_encoder_config(card)},
        text_config={"model_type": text_type, **TINY_TEXT, **text_overrides},
        audio_token_id=TINY_AUDIO_TOKEN,
    )
    model = perturbed(
        lambda: getattr(transformers, f"{model_name}ForConditionalGeneration")(config), init_seed=4320 + seed, seed=seed
    )
    return save_with_features(model, directory, card, max_shard_size)


def save_tiny_voxtral(directory, *, max_shard_size: str = "40KB"):
    """A tiny random FULL Voxtral (audio tower + projector + Llama LM)."""
    return save_tiny_audio_lm(directory, TINY_VOXTRAL, "Voxtral", "voxtral_encoder", "llama", 4, max_shard_size)


def save_tiny_qwen3_asr(directory, *, max_shard_size: str = "40KB"):
    """A tiny random FULL Qwen3-ASR (AuT tower + projector + Qwen3 LM)."""
    return save_tiny_audio_lm(directory, TINY_QWEN3_ASR, "Qwen3ASR", "qwen3_asr_encoder", "qwen3", 6, max_shard_size,
                              head_dim=16)  # fmt: skip


def save_tiny_audioflamingo3(directory, *, max_shard_size: str = "40KB"):
    """A tiny random FULL Audio Flamingo 3 (Whisper tower + average pool + projector + Qwen2 LM)."""
    return save_tiny_audio_lm(directory, TINY_AUDIOFLAMINGO3, "AudioFlamingo3", "audioflamingo3_encoder", "qwen2", 7,
                              max_shard_size)  # fmt: skip


def save_tiny_glmasr(directory, *, max_shard_size: str = "40KB"):
    """A tiny random FULL GLM-ASR (rotary Whisper tower + projector + Llama LM)."""
    return save_tiny_audio_lm(directory, TINY_GLMASR, "GlmAsr", "glmasr_encoder", "llama", 8, max_shard_size)


def save_tiny_qwen2_5_omni(directory, *, thinker_only: bool = False, max_shard_size: str = "40KB"):
    """Save a tiny random FULL Qwen2.5-Omni (or thinker-only) model, sharded, with its feature config."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerForConditionalGeneration

    text = {**TINY_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}}
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 32,
        "fullatt_block_indexes": [0],
    }
    thinker = {"audio_config": tiny_audio_config(), "text_config": text, "vision_config": vision}
    torch.manual_seed(1234)
    if thinker_only:
        model = Qwen2_5OmniThinkerForConditionalGeneration(Qwen2_5OmniThinkerConfig(**thinker))
    else:
        model = Qwen2_5OmniForConditionalGeneration(
            Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
        )
    perturb_(model, seed=5)
    return save_with_features(model, directory, TINY_QWEN_OMNI, max_shard_size)


def save_tiny_phi4_multimodal(directory, *, max_shard_size: str = "40KB"):
    """Save a tiny random FULL Phi-4-multimodal (audio + vision embeddings, Phi-3 LM), sharded, with its feature
    config. The tower's normalisation buffers (global_mean / global_invstd) are drawn too: they are not parameters."""
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    audio = {**card_encoder_config(TINY_PHI4_MULTIMODAL), "audio_token_id": TINY_AUDIO_TOKEN}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14, "crop_size": 28, "image_token_id": TINY_AUDIO_TOKEN + 1}  # fmt: skip
    config = Phi4MultimodalConfig(**TINY_TEXT, pad_token_id=0, bos_token_id=1, eos_token_id=2, audio_config=audio,
                                  vision_config=vision)  # fmt: skip
    model = perturbed(lambda: Phi4MultimodalForCausalLM(config), init_seed=4325, seed=6)
    norm = model.model.embed_tokens_extend.audio_embed.encoder.encoder_embedding
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        norm.global_mean.copy_(torch.randn(norm.global_mean.shape, generator=generator) * 2 + 8)
        norm.global_invstd.copy_(torch.rand(norm.global_invstd.shape, generator=generator) * 0.4 + 0.2)
    return save_with_features(model, directory, TINY_PHI4_MULTIMODAL, max_shard_size)


def save_tiny_granite_speech(directory, *, max_shard_size: str = "40KB"):
    """Save a tiny random FULL Granite Speech model (conformer encoder + Q-Former projector + Granite LM), sharded,
    with its feature config. HF keeps the encoder and projector side by side under ``model``; the returned model
    also holds them under ``model.audio_tower`` (added after saving, not in the checkpoint), the tower contaudio
    loads, so the conformance table can name it."""
    from transformers import GraniteSpeechConfig, GraniteSpeechForConditionalGeneration

    tower = card_encoder_config(TINY_GRANITE_SPEECH)
    config = GraniteSpeechConfig(**{**tower, "text_config": {"model_type": "granite", **TINY_TEXT}},
                                 audio_token_index=TINY_AUDIO_TOKEN, has_lora_adapter=False)  # fmt: skip
    model = perturbed(lambda: GraniteSpeechForConditionalGeneration(config), init_seed=4326, seed=8)
    save_with_features(model, directory, TINY_GRANITE_SPEECH, max_shard_size)
    model.model.audio_tower = torch.nn.Module()
    model.model.audio_tower.encoder, model.model.audio_tower.projector = model.model.encoder, model.model.projector
    return model.eval()


def save_tiny_gemma3n(directory, *, max_shard_size: str = "40KB"):
    """Save a tiny random FULL Gemma 3n (audio tower, embedders, Gemma 3n LM), sharded, with its feature config.

    Token ids follow the real layout (vision ids, then audio ids, at the end of the text vocabulary: HF pads the audio
    rows with the embedding of id ``vocab_size - 1``). The vision tower is timm's MobileNetV5 and timm is no dependency
    of contaudio, so a one-layer stand-in takes its place (saved under ``model.vision_tower.*``, never loaded).
    """
    from unittest import mock

    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration
    from transformers.models.gemma3n import modeling_gemma3n
    from transformers.models.gemma3n.configuration_gemma3n import Gemma3nVisionConfig

    audio = card_encoder_config(TINY_GEMMA3N)
    vision = {"hidden_size": 16, "vocab_size": 8, "vocab_offset": audio["vocab_offset"] - 8}
    text = {"vocab_size": audio["vocab_offset"] + audio["vocab_size"], "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "vocab_size_per_layer_input": vision["vocab_offset"], "hidden_size_per_layer_input": 8,
            "num_kv_shared_layers": 0, "laurel_rank": 4, "altup_num_inputs": 2, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "activation_sparsity_pattern": [0.0, 0.0]}  # fmt: skip
    offset, audio_offset = vision["vocab_offset"], audio["vocab_offset"]
    config = Gemma3nConfig(text_config=text, vision_config=vision, audio_config=audio, image_token_id=offset + 1,
                           boi_token_id=offset + 2, eoi_token_id=offset + 3, audio_token_id=audio_offset + 1,
                           boa_token_id=audio_offset + 2, eoa_token_id=audio_offset + 3)  # fmt: skip
    build = modeling_gemma3n.AutoModel.from_config

    def from_config(*args, **kwargs):  # transformers 5.14 passes the vision config as config=
        if isinstance(kwargs.get("config", args[0] if args else None), Gemma3nVisionConfig):
            return torch.nn.Linear(2, 2)
        return build(*args, **kwargs)

    torch.manual_seed(4328)
    with mock.patch.object(modeling_gemma3n.AutoModel, "from_config", side_effect=from_config):
        model = Gemma3nForConditionalGeneration(config)
    perturb_(model, seed=9)
    return save_with_features(model, directory, TINY_GEMMA3N, max_shard_size)


def hf_audio_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The audio tower inside a full/thinker HF model, whatever the module nesting of this transformers version."""
    for path in ("thinker.model.audio_tower", "thinker.audio_tower", "model.audio_tower", "audio_tower"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise AttributeError(f"{type(model).__name__} has no audio tower")


def assert_holds_tower(io, reference: dict[str, torch.Tensor], what: str = "") -> None:
    """``io``'s encoder holds exactly the tower weights ``reference`` (a state dict), less the ones it dropped
    because its forward never reads them."""
    ours = io.encoder.state_dict()
    assert set(ours) == set(reference) - set(io.dropped_weights), what
    for key, tensor in ours.items():
        assert torch.equal(tensor, reference[key]), (what, key)


# --------------------------------------------------------------------------- processors and repository layouts
def word_tokenizer(special_tokens, **named_tokens):
    """A tiny word-level tokenizer (``<unk>``, ``<pad>`` and ``special_tokens``, each one id) built in code, for saving
    a model's processor without its hub tokenizer; ``named_tokens`` (e.g. ``audio_token="<|AUDIO|>"``) become the
    tokenizer's named special tokens, which some processors read."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", "<pad>", *special_tokens]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(tokens)
    extra = {"extra_special_tokens": named_tokens} if named_tokens else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", **extra)


def read_weights(directory) -> dict[str, torch.Tensor]:
    """Every tensor of a saved checkpoint (sharded or one file), by its key in the files."""
    from pathlib import Path

    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def relayout(source, target, rename: Callable[[str], str], config: dict, keep=("preprocessor_config.json",)) -> None:
    """Write ``source``'s weights into ``target`` as one ``model.safetensors`` with every key passed through
    ``rename``, ``config`` as its config.json, and the files named in ``keep`` copied over: a checkpoint laid out
    the way another repository is."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    state = {rename(key): tensor.contiguous() for key, tensor in read_weights(source).items()}
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config))
    for name in keep:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)


def rename_prefixes(mapping: dict[str, str]) -> Callable[[str], str]:
    """A key renamer: the first prefix of ``mapping`` that ``key`` starts with is replaced; other keys unchanged.

    >>> rename_prefixes({"model.audio_tower.": "audio_tower."})("model.audio_tower.conv1.weight")
    'audio_tower.conv1.weight'
    """

    def rename(key: str) -> str:
        for old, new in mapping.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    return rename


INLINE_PROMPT = "the installed transformers' processor expands the prompt inline, not through replace_audio_token"


def writes_placeholders_through(processor_class: type, method: str = "replace_audio_token") -> bool:
    """Whether ``processor_class.__call__`` writes its audio placeholders through ``method`` in the installed
    transformers (5.25's processors do; 5.14.1's have the method but expand the prompt inline): a test injecting a
    fault there checks something only where it does."""
    import inspect

    caller = next(klass for klass in inspect.getmro(processor_class) if "__call__" in vars(klass))
    return f"self.{method}(" in inspect.getsource(caller)  # the class whose __call__ runs: does it call the method?
