"""A tiny ESPnet SpeechLM recipe, built offline in a folder: what ESPnet 202611's scripts need to run.

``build_recipe(root)`` writes, under ``root``:

* ``lm/``: a tiny HF tokenizer (a WordLevel vocabulary saved as a ``PreTrainedTokenizerFast``) and a tiny
  causal LM (``Qwen2ForCausalLM``, ``architectures`` set, vocabulary = the tokenizer's), both saved by
  transformers, so ``AutoTokenizer``/``AutoConfig``/``from_pretrained`` read them as a hub checkpoint.
* ``corpus/``: a few clips (16 / 22.05 / 44.1 kHz, mono and stereo, 0.5-3 s, 16-bit WAV) with ``wav.scp`` and
  ``text`` (Kaldi style), turned into ESPnet's data json for ``audio_to_text`` by ESPnet's own
  ``bin/prepare_dataset_json.py`` (readers ``kaldi_audio`` and ``text``).
* ``train.yaml``: ``job_type: speechlm``; ``multimodal_io`` with ``text`` first (token ids follow that order) and
  ``continuous_audio`` on the hub id ESPnet's class accepts; ``preprocessor`` and ``data_loading`` as
  ``SpeechLMJobTemplate.build_preprocessor`` reads them; ``model`` with the tiny LM and sdpa attention.

The audio encoder's weights are not made here: ``tiny_hub(QWEN_OMNI_7B)`` (conftest) saves them in the private
HF cache under the hub id the YAML names.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

TASK = "audio_to_text"
DATA_NAME = "tiny"
ENCODER_TAG = "Qwen/Qwen2.5-Omni-7B"
WORDS = (
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    "to",
    "home",
    "fast",
    "slow",
    "red",
    "blue",
    "one",
    "two",
    "three",
    "hello",
    "world",
    "speech",
    "model",
)
UNK = "[UNK]"
EOS = "<|endoftext|>"  # transformers gives a Qwen2 tokenizer this eos/pad when the vocabulary lacks one
CLIPS = (  # (id, rate, channels, seconds): mono and stereo, at and off the encoder's 16 kHz
    ("utt01", 16_000, 1, 0.5),
    ("utt02", 22_050, 2, 1.3),
    ("utt03", 44_100, 1, 2.1),
    ("utt04", 16_000, 2, 3.0),
    ("utt05", 44_100, 2, 0.77),
    ("utt06", 22_050, 1, 1.01),
)


@dataclass(frozen=True)
class Recipe:
    """Paths of a built recipe."""

    root: Path
    lm_dir: Path
    corpus: Path
    data_json: Path
    train_yaml: Path
    clips: dict[str, Path]

    @property
    def specifier(self) -> str:
        """ESPnet's unregistered data specifier ``task:name:data_json``."""
        return f"{TASK}:{DATA_NAME}:{self.data_json}"


def save_tokenizer_and_lm(directory: Path, seed: int = 0) -> None:
    """A WordLevel tokenizer over ``WORDS`` (+ UNK, EOS) and a tiny ``Qwen2ForCausalLM`` of that vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {token: i for i, token in enumerate([UNK, EOS, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, eos_token=EOS, pad_token=EOS, model_max_length=1_000_000
    )
    tokenizer.save_pretrained(directory)
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        architectures=["Qwen2ForCausalLM"],
    )  # fmt: skip
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    loaded = len(AutoTokenizer.from_pretrained(directory).get_vocab())  # ESPnet's text IO: vocab <= config's
    assert loaded == config.vocab_size, f"the tokenizer ESPnet loads has {loaded} tokens, the LM {config.vocab_size}"


def write_corpus(directory: Path, seed: int = 0, subtype: str = "PCM_16") -> dict[str, Path]:
    """The clips of ``CLIPS`` as WAV (``subtype``), ``wav.scp`` and ``text`` (a few random words each) in ``directory``.

    ESPnet's ``kaldi_audio`` reader returns a WAV's own sample type: int16 for PCM_16, float32 for FLOAT.
    """
    import soundfile

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    clips, scp, text = {}, [], []
    for clip_id, rate, channels, seconds in CLIPS:
        samples = round(seconds * rate)
        wave = 0.3 * rng.standard_normal((samples, channels)).astype(np.float32)
        path = directory / f"{clip_id}.wav"
        soundfile.write(path, wave if channels > 1 else wave[:, 0], rate, subtype=subtype)
        clips[clip_id] = path
        scp.append(f"{clip_id} {path}")
        text.append(f"{clip_id} " + " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))))
    (directory / "wav.scp").write_text("\n".join(scp) + "\n")
    (directory / "text").write_text("\n".join(text) + "\n")
    return clips


def prepare_dataset_json(corpus: Path, output: Path, python: str = sys.executable) -> Path:
    """ESPnet's own ``bin/prepare_dataset_json.py`` over ``corpus/wav.scp`` (kaldi_audio) and ``corpus/text``."""
    triplets = [f"audio1,{corpus / 'wav.scp'},kaldi_audio", f"text1,{corpus / 'text'},text"]
    command = [python, "-m", "espnet2.speechlm.bin.prepare_dataset_json", "--triplets", *triplets,
               "--output_json", str(output)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return output


def train_config(lm_dir: Path, encoder_tag: str = ENCODER_TAG) -> dict:
    """The train YAML's content: every key ``SpeechLMJobTemplate`` and ``bin/train.py`` read."""
    return {
        "job_type": "speechlm",
        "seed": 42,
        "multimodal_io": {  # order matters: token ids are handed out in this order
            "text": {"tokenizer_name": str(lm_dir)},
            "continuous_audio": {"encoder_hf_model_tag": encoder_tag, "dtype": "float32", "device": "cpu"},
        },
        "preprocessor": {
            "audio_input": "continuous_audio",
            "audio_output": "discrete_audio",
            "loss_region": "assistant",
        },
        "data_loading": {"batchfy_method": "bucket", "batch_size": 2000, "num_workers": 0},
        "model": {
            "model_choice": "parallel",
            "model_hf_tag": str(lm_dir),
            "model_conf": {"attn_implementation": "sdpa"},
        },
        "trainer": {
            "type": "deepspeed",
            "max_step": 1,
            "save_interval": 1,
            "log_interval": 1,
            "deepspeed_config": "deepspeed.json",
        },
    }


def write_yaml(path: Path, config: dict) -> Path:
    """``config`` as YAML, keys in their given order (ESPnet's token layout depends on it)."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_recipe(root: Path, python: str = sys.executable, subtype: str = "PCM_16") -> Recipe:
    """Everything under ``root``: tokenizer + LM, corpus (WAV ``subtype``), ESPnet's data json, train YAML."""
    lm_dir, corpus = root / "lm", root / "corpus"
    save_tokenizer_and_lm(lm_dir)
    clips = write_corpus(corpus, subtype=subtype)
    data_json = prepare_dataset_json(corpus, root / "data.json", python)
    train_yaml = write_yaml(root / "train.yaml", train_config(lm_dir))
    return Recipe(root, lm_dir, corpus, data_json, train_yaml, clips)
