"""Find a checkpoint and load ONLY its audio encoder.

A tag is a local directory, the name of a shipped card, or a hub id. Weights
come from safetensors only: the index (``model.safetensors.index.json``) says
which shards hold the encoder's keys, and only those shards are opened (or
downloaded). The whole omni model is never built. Key checks are strict: a
missing or unexpected key is an error, never a silently random weight.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors import safe_open
from transformers import PreTrainedModel
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.initialization import no_init_weights
from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
from transformers.utils import FEATURE_EXTRACTOR_NAME, PROCESSOR_NAME

from contaudio.encoders.cards import all_cards, find_card
from contaudio.encoders.registry import EncoderFamily, WeightLayout, family_for_model_type, get_family
from contaudio.features import Featurizer, featurizer_from_dict
from contaudio.features.base import EXTRACTOR_TYPE_KEY

log = logging.getLogger(__name__)

WeightsMode = Literal["pretrained", "random", "random_hf_init"]
WEIGHTS_MODES = ("pretrained", "random", "random_hf_init")
RANDOM_MODES = ("random", "random_hf_init")
# weights="random": transformers' init, then every matrix/conv weight ~ N(0, 1/fan_in) (so a tiny card's output
# depends on its input as a real checkpoint's does; transformers' fixed std 0.02 all but silences a 3-conv stack
# of fan-in 72), every bias ~ N(0, RANDOM_BIAS_STD) and every norm weight ~ N(1, RANDOM_NORM_STD). transformers
# zeroes biases and sets norms to identity; with those an all-zero padded frame stays zero through a conv,
# which hides padding leaks. Real checkpoints have neither property.
RANDOM_BIAS_STD = 0.1
RANDOM_NORM_STD = 0.2
CONFIG_FILE = "config.json"
FEATURES_FILE = FEATURE_EXTRACTOR_NAME  # "preprocessor_config.json": the extractor's own file (transformers 4.x)
PROCESSOR_FILE = PROCESSOR_NAME  # "processor_config.json": transformers 5.x processors nest the extractor in it
NESTED_EXTRACTOR_KEYS = ("feature_extractor", "audio_processor")  # where PROCESSOR_FILE nests it (checked in order)
REMOTE_CODE_KEY = "auto_map"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
OFFLINE_HINT = "to run offline with random weights, pass weights='random' (CLI: --weights random)"
RANDOM_HINT = "random weights still need the model's config: name a shipped card (`contaudio cards` lists them)"
CARD_NAMESPACE = "contaudio/"  # the test cards' names: never a hub repo


class WeightsNotFoundError(FileNotFoundError):
    """No reachable config or weights for a tag; the message says where we looked."""


class CheckpointFiles:
    """Files of a checkpoint, from a local directory or the HF hub/cache."""

    def __init__(
        self, tag: str, repo_id: str | None = None, revision: str | None = None, hint: str = OFFLINE_HINT
    ) -> None:
        self.tag = tag
        self.repo_id = repo_id
        self.revision = revision
        self.local_dir = None if repo_id else Path(tag)
        self.hint = hint  # the way out a "not found" message ends with

    def where(self) -> str:
        if self.local_dir is not None:
            return f"local directory {self.local_dir}"
        return f"hub repo {self.repo_id} (HF cache: {hub_constants.HF_HUB_CACHE})"

    def get(self, filename: str, *, required: bool) -> str | None:
        """Local path of ``filename`` (downloading it if needed and allowed), or None if absent."""
        if self.local_dir is not None:
            path = self.local_dir / filename
            if path.is_file():
                return str(path)
            if required:
                raise WeightsNotFoundError(f"{self.where()} has no {filename}; {self.hint}")
            return None
        return self._get_from_hub(filename, required=required)

    def _get_from_hub(self, filename: str, *, required: bool) -> str | None:
        kwargs = {"repo_id": self.repo_id, "filename": filename, "revision": self.revision}
        try:
            return hf_hub_download(**kwargs, local_files_only=True)
        except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError):
            pass
        if hub_constants.HF_HUB_OFFLINE:
            if not required:
                return None
            raise WeightsNotFoundError(
                f"{filename} of {self.repo_id!r} is not in the HF cache ({hub_constants.HF_HUB_CACHE}) and "
                f"HF_HUB_OFFLINE is set, so the hub was not asked. Download it where there is a network "
                f"(hf download {self.repo_id}), pass a local directory, or {self.hint}"
            )
        try:
            return hf_hub_download(**kwargs)
        except EntryNotFoundError:
            if required:
                raise WeightsNotFoundError(f"hub repo {self.repo_id} has no {filename}") from None
            return None
        except Exception as err:  # network errors come in many types
            if not required:
                log.warning("could not fetch %s from %s (%s); continuing without it", filename, self.repo_id, err)
                return None
            raise WeightsNotFoundError(
                f"could not get {filename} for {self.tag!r}: it is not a local directory, not in the HF cache "
                f"({hub_constants.HF_HUB_CACHE}), and the hub could not be reached ({type(err).__name__}: {err}). "
                f"Set HF_HUB_OFFLINE=1 to fail fast, pass a local directory, or {self.hint}"
            ) from err


@dataclass(frozen=True)
class EncoderSource:
    """Everything needed to build an encoder, before any weights are read."""

    tag: str
    family: EncoderFamily
    encoder_config: dict[str, Any]
    features: Featurizer
    files: CheckpointFiles | None  # None: build from a card (random weights only)
    model_config: dict[str, Any] | None = None  # the whole model's config.json (a card's model_config), for projectors

    def describe(self) -> str:
        return self.files.where() if self.files else f"shipped card {self.tag!r}"


def resolve(tag: str, weights: WeightsMode, revision: str | None = None, config_only: bool = False) -> EncoderSource:
    """Work out family, encoder config and feature config for ``tag``.

    ``config_only``: no weights will be read (e.g. ESPnet's length-stats step), so a shipped
    card answers for its hub id without touching the hub or the cache.
    """
    if weights not in WEIGHTS_MODES:
        raise ValueError(f"weights must be one of {WEIGHTS_MODES}, got {weights!r}")
    if os.path.isdir(tag):
        return _from_files(tag, CheckpointFiles(tag))
    card = find_card(tag)
    if card is not None and (weights in RANDOM_MODES or config_only):
        family = get_family(card.family)
        features = family.adapt_features(featurizer_from_dict(card.feature_extractor))
        return EncoderSource(tag, family, card.encoder_config, features, None, card.model_config)
    if card is not None and card.hub_id is None:
        raise ValueError(f"card {tag!r} is a test card without weights; use weights='random' with it")
    if card is None and tag.lower().startswith(CARD_NAMESPACE):
        raise ValueError(
            f"no shipped card is named {tag!r}{did_you_mean(tag, all_cards())} (`contaudio cards` lists them)"
        )
    repo_id = card.hub_id if card is not None else tag
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")):
        cards = ", ".join(sorted(all_cards()))
        raise ValueError(
            f"{tag!r} is not a local directory, a hub id (org/name) or a shipped card; shipped cards: {cards}"
        )
    hint = RANDOM_HINT if weights in RANDOM_MODES else OFFLINE_HINT
    return _from_files(tag, CheckpointFiles(tag, repo_id=repo_id, revision=revision, hint=hint))


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``names`` (case aside), or "".

    >>> did_you_mean("contaudio/TINY-whisper", ["contaudio/tiny-whisper", "openai/whisper-tiny"])
    "; did you mean 'contaudio/tiny-whisper'?"
    """
    by_lower = {candidate.lower(): candidate for candidate in names}
    close = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.8)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def _from_files(tag: str, files: CheckpointFiles) -> EncoderSource:
    raw = json.loads(Path(files.get(CONFIG_FILE, required=True)).read_text())
    if "model_type" not in raw:
        raise ValueError(f"{files.where()}: config.json has no model_type; is it a transformers checkpoint?")
    family = family_for_model_type(raw["model_type"])
    features = family.adapt_features(read_features(files, raw, family))
    return EncoderSource(tag, family, family.encoder_config(raw), features, files, raw)


def read_features(files: CheckpointFiles, config: dict[str, Any], family: EncoderFamily) -> Featurizer:
    """The checkpoint's featurizer, from the feature-extractor settings wherever ``AutoFeatureExtractor`` finds them.

    transformers' own lookup (``FeatureExtractionMixin.get_feature_extractor_dict``) reads them: the
    ``feature_extractor`` (or ``audio_processor``) entry of ``processor_config.json`` when there is one
    (transformers 5.x processors save only that file), else ``preprocessor_config.json``. Both files come through
    ``files`` (local directory, HF cache or hub), and transformers reads them from the folder they are in. With
    neither file, the family's default features are used and a warning says so; a file that is there but cannot be
    read, or settings contaudio cannot reproduce, are refused, naming the file and the key.
    """
    found = {name: path for name in (PROCESSOR_FILE, FEATURES_FILE) if (path := files.get(name, required=False))}
    if not found:
        log.warning(
            "%s has neither %s nor %s; using %s's default features", files.where(), PROCESSOR_FILE, FEATURES_FILE,
            family.name,
        )  # fmt: skip
        return family.default_features
    folders = {str(Path(path).parent) for path in found.values()}
    if len(folders) != 1:
        raise WeightsNotFoundError(
            f"{files.where()}: {' and '.join(found)} resolved to different folders ({sorted(folders)}), so they are "
            "not one revision of the checkpoint; pass a local directory or a pinned revision"
        )
    try:
        settings, _ = FeatureExtractionMixin.get_feature_extractor_dict(folders.pop(), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{files.where()}: transformers finds no feature-extractor settings in {' / '.join(found)} (it looks for "
            f"the keys {' or '.join(map(repr, NESTED_EXTRACTOR_KEYS))} in {PROCESSOR_FILE}, else for {FEATURES_FILE}): "
            f"{err}. Save the model's processor next to the weights (processor.save_pretrained(dir)), or add the "
            f"extractor's {FEATURES_FILE} (feature_extractor.save_pretrained(dir))"
        ) from err
    where = f"{files.where()}: {settings_source(found, settings)}"
    if not isinstance(settings, dict):
        raise ValueError(f"{where} holds {type(settings).__name__}, not the extractor's settings (a JSON object)")
    settings = with_extractor_type(settings, config, family, where)
    try:
        return featurizer_from_dict(settings)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{where}: contaudio cannot reproduce these feature-extractor settings ({err}). Fix that setting there "
            f"(or save the processor again with transformers' save_pretrained), or use a checkpoint whose "
            f"{EXTRACTOR_TYPE_KEY} contaudio reproduces"
        ) from err


def settings_source(found: dict[str, str], settings: Any) -> str:
    """Which file (and key) ``settings`` came from, for messages: a nested entry of ``processor_config.json``, else
    ``preprocessor_config.json``."""
    if PROCESSOR_FILE in found:
        processor = json.loads(Path(found[PROCESSOR_FILE]).read_text())
        for key in NESTED_EXTRACTOR_KEYS:
            if key in processor and processor[key] == settings:
                return f"{PROCESSOR_FILE} (key {key!r})"
    return FEATURES_FILE


def with_extractor_type(settings: dict[str, Any], config: dict[str, Any], family: EncoderFamily, where: str) -> dict:
    """``settings`` with the extractor's type as ``AutoFeatureExtractor`` picks it: its own ``feature_extractor_type``,
    else ``config.json``'s, else transformers' extractor for ``config.json``'s ``model_type``, else (a thinker or
    encoder-only config, which transformers maps to none) the family's one extractor. Remote code is refused.

    >>> from contaudio.encoders import get_family
    >>> with_extractor_type({"feature_size": 80}, {"model_type": "gemma3n"}, get_family("gemma3n"), "here")
    {'feature_size': 80, 'feature_extractor_type': 'Gemma3nAudioFeatureExtractor'}
    """
    if EXTRACTOR_TYPE_KEY in settings:
        return settings
    if REMOTE_CODE_KEY in settings:
        raise ValueError(
            f"{where} names no {EXTRACTOR_TYPE_KEY}, only remote code ({REMOTE_CODE_KEY}), which contaudio never "
            f"runs; set {EXTRACTOR_TYPE_KEY} to the transformers extractor class it is"
        )
    kind = config.get(EXTRACTOR_TYPE_KEY) or FEATURE_EXTRACTOR_MAPPING_NAMES.get(config["model_type"])
    return {**settings, EXTRACTOR_TYPE_KEY: kind or family.default_features.extractor_type}


def weight_layout(layout: WeightLayout) -> dict[str, str]:
    """``{checkpoint prefix: encoder prefix}``; one prefix ``p`` is ``{p: ""}`` (the whole encoder under ``p``).

    >>> weight_layout("audio_tower."), weight_layout({"encoder.": "encoder.", "projector.": "projector."})
    ({'audio_tower.': ''}, {'encoder.': 'encoder.', 'projector.': 'projector.'})
    """
    return {layout: ""} if isinstance(layout, str) else dict(layout)


def encoder_key(key: str, layout: dict[str, str]) -> str | None:
    """The encoder's name for checkpoint ``key`` under ``layout``; None when ``key`` is no encoder tensor there.

    >>> encoder_key("model.projector.linear.bias", {"model.encoder.": "encoder.", "model.projector.": "projector."})
    'projector.linear.bias'
    """
    for source, target in layout.items():
        if key.startswith(source):
            return target + key[len(source) :]
    return None


def _pick_layout(keys: Iterable[str], layouts: tuple[WeightLayout, ...], expected: set[str]) -> dict[str, str]:
    """The layout under which the most expected encoder keys appear (the first one on a tie)."""
    keys = list(keys)
    candidates = [weight_layout(layout) for layout in layouts]
    hits = [sum(encoder_key(key, layout) in expected for key in keys) for layout in candidates]
    best = max(range(len(candidates)), key=hits.__getitem__)
    if hits[best] == 0:
        raise ValueError(
            f"no audio-encoder tensors found: looked for keys under prefixes {[list(c) for c in candidates]} "
            f"(the encoder's keys look like {sorted(expected)[0]}); first checkpoint keys: {keys[:3]}"
        )
    return candidates[best]


def read_encoder_state(files: CheckpointFiles, family: EncoderFamily, expected: set[str]) -> dict[str, torch.Tensor]:
    """Read the encoder tensors (and only those) from a safetensors checkpoint."""
    index_path = files.get(INDEX_FILE, required=False)
    if index_path is not None:
        weight_map: dict[str, str] = json.loads(Path(index_path).read_text())["weight_map"]
    else:
        single = files.get(SINGLE_FILE, required=False)
        if single is None:
            pickled = [name for name in PICKLE_FILES if files.get(name, required=False)]
            detail = (
                f"only pickle weights ({', '.join(pickled)}), which contaudio never unpickles"
                if pickled
                else (f"neither {INDEX_FILE} nor {SINGLE_FILE}")
            )
            raise WeightsNotFoundError(
                f"{files.where()} has {detail}. Convert the checkpoint to safetensors "
                f"(model.save_pretrained(dir, safe_serialization=True)), or {OFFLINE_HINT}"
            )
        with safe_open(single, framework="pt") as handle:
            weight_map = {key: SINGLE_FILE for key in handle.keys()}
    layout = _pick_layout(weight_map, family.weight_prefixes, expected)
    wanted = {key: name for key in weight_map if (name := encoder_key(key, layout)) is not None}
    shards = sorted({weight_map[key] for key in wanted})
    prefixes = ", ".join(map(repr, layout))
    log.info(
        "reading %d encoder tensors (%s) from %d shard(s) of %s", len(wanted), prefixes, len(shards), files.where()
    )
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(files.get(shard, required=True), framework="pt") as handle:
            for key in handle.keys():
                if key in wanted:
                    state[wanted[key]] = handle.get_tensor(key)
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise ValueError(
            f"{files.where()}: encoder keys under {prefixes} do not match {family.encoder_class.__name__}: "
            f"missing {sorted(missing)[:5]} ({len(missing)}), unexpected {sorted(unexpected)[:5]} "
            f"({len(unexpected)}). Is the checkpoint's config.json for these weights?"
        )
    return state


def build_encoder(
    source: EncoderSource,
    weights: WeightsMode,
    dtype: torch.dtype,
    attn_implementation: str | None,
    seed: int = 0,
    family: EncoderFamily | None = None,
) -> PreTrainedModel:
    """Build the audio encoder on CPU: random (seeded, see :func:`perturb_init_`) or the checkpoint's weights.

    ``family``: the mode's view of the source's family (:meth:`EncoderFamily.view`; default the family itself),
    which says which module to build (the tower, or the tower and the model's projector) and which keys it reads.
    """
    family = family or source.family
    config = family.config_class.from_dict(family.module_config(source.encoder_config, source.model_config))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    pretrained = weights == "pretrained"
    with torch.random.fork_rng(devices=[]), no_init_weights() if pretrained else nullcontext():
        torch.manual_seed(seed)
        encoder = family.encoder_class._from_config(config, **kwargs)
        if weights == "random":
            perturb_init_(encoder, seed)
    if pretrained:
        if source.files is None:
            raise ValueError(f"{source.tag!r} is a card without weights; use weights='random'")
        expected = set(encoder.state_dict().keys())
        state = read_encoder_state(source.files, family, expected)
        state = {key: tensor.to(dtype) for key, tensor in state.items()}
        encoder.load_state_dict(state, strict=True, assign=True)
    family.trim(encoder)
    return encoder.eval()


def is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm, RMSNorm and the like (by type, or by a class name ending in "Norm")."""
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or type(module).__name__.endswith("Norm")


@torch.no_grad()
def perturb_init_(encoder: torch.nn.Module, seed: int) -> None:
    """Seeded weights that keep the signal and show leaks: matrices ``N(0, 1/fan_in)``, biases
    ``N(0, RANDOM_BIAS_STD)``, norms ``N(1, RANDOM_NORM_STD)`` (embeddings and buffers untouched).

    Random weights are then honest for padding checks: a padded frame that leaks into a conv
    or the attention changes values (with transformers' init it would stay exactly zero).
    """
    generator = torch.Generator().manual_seed(seed)
    for module in encoder.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                mean, std = 0.0, RANDOM_BIAS_STD
            elif name == "weight" and is_norm(module):
                mean, std = 1.0, RANDOM_NORM_STD
            elif name == "weight" and param.ndim >= 2 and not isinstance(module, torch.nn.Embedding):
                mean, std = 0.0, param[0].numel() ** -0.5  # fan-in of one output unit
            else:
                continue
            noise = torch.randn(param.shape, generator=generator) * std + mean
            param.copy_(noise.to(param.dtype))
