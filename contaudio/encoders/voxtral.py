"""Voxtral audio encoder (``audio_tower.*`` of mistralai/Voxtral-Mini-3B-2507 and -Small-24B-2507).

A Whisper-large-v3 encoder under another name: one 30 s window (3000 frames, 128
mels) -> 1500 rows of ``d_model`` (1280), full attention over the window and no
padding mask. Voxtral's processor pads the waveform to the next multiple of 30 s
and encodes each window on its own, which is exactly our ``long_clip="windows"``
policy; the 4-row reshape and the projector of ``get_audio_features`` belong to
the LM, not to the tower. So the family reuses Whisper's forward and length
rule unchanged: only the HF classes, the config path and the weight prefix differ.
"""

from __future__ import annotations

from transformers.models.voxtral.configuration_voxtral import VoxtralEncoderConfig
from transformers.models.voxtral.modeling_voxtral import VoxtralEncoder

from contaudio.benchmark import windowed_encoder_flops
from contaudio.encoders.registry import EncoderFamily, register
from contaudio.encoders.whisper import whisper_forward, whisper_forward_as_given
from contaudio.features import FeatureConfig
from contaudio.lengths import WINDOW_FRAMES, whisper_rows

VOXTRAL_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=30)

VOXTRAL = register(
    EncoderFamily(
        name="voxtral",
        config_paths={"voxtral": ("audio_config",), "voxtral_encoder": ()},
        weight_prefixes=("audio_tower.", "model.audio_tower.", ""),
        encoder_class=VoxtralEncoder,
        config_class=VoxtralEncoderConfig,
        rows=whisper_rows,
        forward=whisper_forward,
        reference_forward=whisper_forward_as_given,
        default_features=VOXTRAL_FEATURES,
        flops=windowed_encoder_flops,
        output_dim_key="d_model",
        window_frames=WINDOW_FRAMES,
    )
)
