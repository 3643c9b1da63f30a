"""The ``returns=`` checks of the families whose processor cuts the waveform into 30 s windows (Audio Flamingo 3,
GLM-ASR), against HF's whole model saved by transformers: a noise-padded batch through contaudio, each clip alone
through HF's processor, and both HF's whole model and the family's oracle on what the processor gives."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from contaudio import ContinuousAudioIO
from contaudio.encoders.windows import ProcessorAudio, run_processor
from helpers.audio import noise
from helpers.batches import noise_padded_batch

SR = 16000
WINDOW_SAMPLES = 30 * SR  # the processors' window: feature_extractor.chunk_length seconds
TAIL_SILENCE_SAMPLES = 800  # 50 ms: the frames straddling the clip's end are silence in HF's features too
LOUD = 100.0  # a loud first window: a whole-clip clamp would floor the quiet ones after it
ATOL = 2e-5  # float32, same weights; our mel vs the extractor's differ by ~1e-6
PADDING_EXTRA = 9  # noise frames past the longest clip of a batch
# clips < 30 s and > 30 s (a loud first window; two whole windows and a partial one): (samples, loud first window)
CLIPS = ((16000, False), (1601, False), (35 * SR, True), (61 * SR, False))

Reference = Callable[[ProcessorAudio], torch.Tensor]  # HF's whole model on the processor's output for one clip


def clip(rng: np.random.Generator, num_samples: int, loud_first_window: bool = False) -> np.ndarray:
    """Noise ending in silence, as speech does (see contaudio.encoders.windows), optionally a loud first window."""
    wav = np.concatenate([noise(rng, num_samples - TAIL_SILENCE_SAMPLES, 0.05), np.zeros(TAIL_SILENCE_SAMPLES)])
    wav = wav.astype(np.float32)
    if loud_first_window:
        wav[:WINDOW_SAMPLES] *= LOUD
    return wav


ORACLE_ATOL = 1e-5  # one clip against the family's oracle: float32, same weights; our mel vs the extractor's ~1e-6


def oracle_disagreements(io: ContinuousAudioIO, wav: np.ndarray, extractor=None) -> list[str]:
    """contaudio (find_length, preprocess, encode_batch) against the family's oracle (HF's processor, then HF's model
    path) on one clip: every way they differ; [] when rows are equal and values within :data:`ORACLE_ATOL`."""
    _, (rows, mel), _ = io.preprocess((wav, SR))
    with torch.inference_mode():
        (ours,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        oracle = io.family.oracle(io.encoder, extractor or io.features.hf_extractor(), wav)
    if oracle.rows is None:
        return [f"HF raised {oracle.error}"]
    found = [f"{name}: {count} rows, HF {oracle.count}" for name, count in
             [("find_length", io.find_length(len(wav))), ("preprocess", rows), ("encode_batch", ours.shape[0])]
             if count != oracle.count]  # fmt: skip
    if oracle.placeholders is not None:  # the tower's rows, before the projector or merge: not what the LM receives
        found.append(f"the oracle counted {oracle.placeholders} placeholders for tower rows")
    if not found and ours.numel() and (diff := float((ours - oracle.rows).abs().max())) > ORACLE_ATOL:
        found.append(f"values differ from HF's by {diff:.3g}")
    return found


def clips(rng: np.random.Generator) -> list[np.ndarray]:
    return [clip(rng, n, loud) for n, loud in CLIPS]


def mode_io(directory, returns: str, layers: list[int] | None = None) -> ContinuousAudioIO:
    """The checkpoint in ``directory`` in one mode (float32, clips > 30 s as windows)."""
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows", returns=returns, layers=layers)  # fmt: skip


def disagreements(
    io: ContinuousAudioIO, wavs: list[np.ndarray], rng: np.random.Generator, reference: Reference
) -> list:
    """contaudio on a noise-padded batch of ``wavs`` (find_length, preprocess, encode_batch) against HF for each clip
    alone: HF's whole model on HF's processor output (``reference``), the family's oracle and, for ``returns="lm"``,
    the placeholders the processor wrote. Every way they differ; [] when counts agree and values are within ATOL."""
    processed = [io.preprocess((wav, SR))[1] for wav in wavs]
    mel, lengths = noise_padded_batch([m for _, m in processed], PADDING_EXTRA, rng)
    extractor = io.features.hf_extractor()
    processor = io.source.family.hf_processor(extractor)  # the registered family (a view may not have it)
    found = []
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
        for wav, (rows, _), ours in zip(wavs, processed, outs, strict=True):
            audio = run_processor(processor, wav)
            theirs, oracle = reference(audio), io.family.oracle(io.encoder, extractor, wav)
            if oracle.rows is None:
                found.append(f"{len(wav)} samples: HF raised {oracle.error}")
                continue
            counts = {"find_length": io.find_length(len(wav)), "preprocess": rows, "encode_batch": ours.shape[-2],
                      "the oracle": oracle.count, "HF's model": theirs.shape[-2]}  # fmt: skip
            if io.returns == "lm":
                counts |= {"the processor's placeholders": audio.placeholders, "the oracle's": oracle.placeholders}
            elif oracle.placeholders is not None:
                found.append(f"{len(wav)} samples: {io.returns} rows are not the LM's, yet the oracle counted some")
            if len(set(counts.values())) > 1:
                found.append(f"{len(wav)} samples: rows differ: {counts}")
                continue
            for name, value in (("encode_batch", ours), ("the oracle", oracle.rows)):
                if ours.numel() and (diff := float((value - theirs).abs().max())) > ATOL:
                    found.append(f"{len(wav)} samples: {name} differs from HF's model by {diff:.3g}")
    return found


def window_rows(states: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``[L, K, R, d]`` hidden states of ``K`` windows -> the first ``rows[k]`` rows of each: ``[L, sum rows, d]``."""
    return torch.cat([states[:, k, :n] for k, n in enumerate(rows.tolist())], dim=1)


def lm_reference(model: torch.nn.Module) -> Reference:
    """HF's whole model's ``get_audio_features(...).pooler_output`` on the processor's windows and masks."""
    return lambda audio: model.get_audio_features(audio.input_features, audio.input_features_mask).pooler_output
