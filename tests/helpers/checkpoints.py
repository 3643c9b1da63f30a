"""Tiny checkpoints built and saved by transformers itself (full models, sharded), from the shipped tiny cards.

Every builder perturbs the weights (non-zero biases, non-identity norms) so padding leaks show.
"""

from __future__ import annotations

import torch

TINY_QWEN_OMNI = "contaudio/tiny-qwen2.5-omni"
TINY_QWEN3_OMNI = "contaudio/tiny-qwen3-omni"
TINY_QWEN2_AUDIO = "contaudio/tiny-qwen2-audio"
TINY_WHISPER = "contaudio/tiny-whisper"
TINY_VOXTRAL = "contaudio/tiny-voxtral"


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
    """HF's WhisperFeatureExtractor configured exactly as the card's feature_extractor says."""
    from transformers import WhisperFeatureExtractor

    from contaudio.encoders import find_card

    raw = {k: v for k, v in find_card(tag).feature_extractor.items() if k != "feature_extractor_type"}
    return WhisperFeatureExtractor(**raw)


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
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    card_extractor(TINY_QWEN3_OMNI).save_pretrained(directory)
    return model.eval()


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
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    card_extractor(TINY_QWEN2_AUDIO).save_pretrained(directory)
    return model.eval()


def save_tiny_whisper(directory, *, max_shard_size: str = "10GB"):
    """Save a tiny random FULL Whisper (encoder-decoder) model with its feature config (one file by default)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        **card_encoder_config(TINY_WHISPER), vocab_size=100, decoder_layers=1, decoder_attention_heads=2,
        decoder_ffn_dim=64, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(4323)
    model = WhisperForConditionalGeneration(config)
    perturb_(model, seed=3)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    card_extractor(TINY_WHISPER).save_pretrained(directory)
    return model.eval()


def save_tiny_voxtral(directory, *, max_shard_size: str = "40KB"):
    """Save a tiny random FULL Voxtral (audio tower + projector + Llama LM), sharded, with its feature config."""
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    config = VoxtralConfig(
        audio_config={"model_type": "voxtral_encoder", **card_encoder_config(TINY_VOXTRAL)},
        text_config={"model_type": "llama", **TINY_TEXT},
        audio_token_id=TINY_AUDIO_TOKEN,
    )
    torch.manual_seed(4324)
    model = VoxtralForConditionalGeneration(config)
    perturb_(model, seed=4)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    card_extractor(TINY_VOXTRAL).save_pretrained(directory)
    return model.eval()


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
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    card_extractor(TINY_QWEN_OMNI).save_pretrained(directory)
    return model.eval()


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
