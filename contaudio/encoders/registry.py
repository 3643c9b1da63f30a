"""One registry: encoder family name -> the family, and the base class every family module fills in.

A family is one module under ``contaudio/encoders/`` holding everything that is that family's:
its length rule (formula in the docstring), its fast forward, its FLOP rule, its weight prefixes
and its HF oracle (HF's own public path on the same weights). It registers itself with
:func:`register`, the way lhotse's ``register_extractor`` works::

    @register
    class Whisper(EncoderFamily):
        name = "whisper"
        ...

A family is keyed by the checkpoint's ``model_type``, never by a hub tag, so any checkpoint of a
supported family (official sizes, fine-tunes, a standalone encoder export) loads the same way.
Its shipped config cards are JSON files in ``contaudio/cards`` naming the family.

Family modules are imported through :func:`import_families`: a module that needs a transformers class
the installed transformers lacks leaves its family *unavailable* (:data:`UNAVAILABLE`, with the class
and the first transformers release that has it) instead of breaking ``import contaudio``; looking the
family up then raises :class:`FamilyUnavailableError` saying what to install.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import FunctionType
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import transformers
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.feature_extraction_utils import FeatureExtractionMixin

from contaudio.encoders.oracle import OracleRows, ask_hf
from contaudio.encoders.refusals import ExpectedRefusal
from contaudio.features import Featurizer
from contaudio.lengths import IntOrTensor

__all__ = [
    "FAMILIES",
    "PROJECTOR_LAYOUTS",
    "RETURNS",
    "TRANSFORMERS_SINCE",
    "UNAVAILABLE",
    "EncoderFamily",
    "FamilyUnavailableError",
    "HiddenStatesView",
    "IntOrTensor",
    "UnavailableFamily",
    "WeightLayout",
    "family_for_model_type",
    "get_family",
    "import_families",
    "register",
]

WeightLayout = str | Mapping[str, str]  # a key prefix, or {checkpoint prefix: encoder prefix}
# An audio tower with the model's multi_modal_projector (a returns="lm" view): the hub's names, then the names
# transformers 5.x saves (under ``model.``)
PROJECTOR_LAYOUTS: tuple[WeightLayout, ...] = (
    {"audio_tower.": "audio_tower.", "multi_modal_projector.": "multi_modal_projector."},
    {"model.audio_tower.": "audio_tower.", "model.multi_modal_projector.": "multi_modal_projector."},
)


class EncoderFamily(ABC):
    """How to find, build, run, count and check one family's audio encoder.

    Class attributes (set by each family):
        name: registry key, e.g. ``"qwen2_5_omni"``.
        config_paths: checkpoint ``model_type`` -> key path from its ``config.json`` to the
            encoder config (``()`` when the checkpoint *is* the encoder), or several such paths tried in order
            (a model type some repositories save nested another way).
        weight_prefixes: where the encoder's tensors sit in a checkpoint, layouts tried in order: a key
            prefix (the whole encoder under it), or ``{checkpoint prefix: encoder prefix}`` for an
            encoder assembled from several parts of the model (Granite Speech: encoder and projector).
        encoder_class / config_class: the HF modules the encoder is built from.
        default_features: the featurizer used when a checkpoint ships no ``preprocessor_config.json``.
        output_dim_key: the config key of the output width.
        window_frames: mel frames the encoder takes at once (3000 = 30 s for Whisper-style
            encoders, every clip padded to the window); ``None`` for encoders that take any length.
        max_frames: the most mel frames the model's own processor passes on (Audio Flamingo 3:
            600 s); a longer clip raises, never cut. ``None``: no limit.
        returns: one line: which HF output contaudio returns for a clip.
        oracle_path: one line: the HF code path the oracle runs.
        mode: which ``returns=`` mode this object answers (a family is its ``"tower"``; :meth:`view` gives the others).
        lm_view: what the model feeds its LM: ``"tower"`` when it is the tower's rows (Qwen-Omni, Granite
            Speech), a subclass of the family adding the model's projector, or ``None`` (no LM: Whisper).
        num_layers_key: the encoder config key of its layer count (``hidden_states`` mode).
    """

    name: ClassVar[str]
    config_paths: ClassVar[dict[str, tuple[str, ...] | tuple[tuple[str, ...], ...]]]
    weight_prefixes: ClassVar[tuple[WeightLayout, ...]]
    encoder_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PreTrainedConfig]]
    default_features: ClassVar[Featurizer]
    output_dim_key: ClassVar[str] = "output_dim"
    window_frames: ClassVar[int | None] = None
    max_frames: ClassVar[int | None] = None
    returns: ClassVar[str]
    oracle_path: ClassVar[str]
    # What the conformance checks (length_check, mask_check) may judge by contaudio's documented rule instead of
    # HF's answer. expected_refusals: the errors HF's own path raises by design, each for the clips it names and
    # why (contaudio/encoders/refusals.py); an HF error that none covers fails the check, naming the clip.
    # min_oracle_share: the least share of a check's clips HF's answer must judge (the rest: declared refusals);
    # a run below it fails. Both are checked for every family on its tiny card (tests/encoders/test_families.py).
    expected_refusals: ClassVar[tuple[ExpectedRefusal, ...]] = ()
    min_oracle_share: ClassVar[float] = 1.0
    mode: ClassVar[str] = "tower"
    lm_view: ClassVar[str | type[EncoderFamily] | None] = "tower"
    num_layers_key: ClassVar[str] = "encoder_layers"
    hidden_dim_key: ClassVar[str] = "d_model"  # the config key of the hidden states' width
    layers_attr: ClassVar[str] = "layers"  # the encoder's ModuleList of layers
    head_modules: ClassVar[tuple[str, ...]] = ()  # modules after the layer stack (hidden_states mode: identities)
    # a norm after the stack that HF ties into its LAST hidden state only (Whisper's layer_norm): hidden_states mode
    # keeps it when the last layer is asked for and makes it an identity otherwise
    final_norm: ClassVar[str | None] = None
    leading_shape: tuple[int, ...] = ()  # dims before [T, D] in each clip's output (hidden_states: the layers)
    # its forward runs the layers through packed.run_windowed_stack, so cuda_graphs=True can replay them from a
    # CUDA graph (contaudio/encoders/graphs.py); tests/encoders/test_graphs.py checks the claim both ways
    graph_stack: ClassVar[bool] = False

    # ------------------------------------------------------------------ the family's own rules
    @staticmethod
    @abstractmethod
    def rows(mel_len: IntOrTensor) -> IntOrTensor:
        """The exact length rule: encoder rows for ``mel_len`` mel frames (int or LongTensor, same type out)."""

    @abstractmethod
    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The fast batched forward: ``mel [B, M_max, n_mels]``, ``lengths [B]`` -> ``[sum rows, D]``.

        ``mel`` is in the encoder's dtype and on its device; ``lengths`` may be anywhere.
        """

    @abstractmethod
    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        """Matmul FLOPs of one forward over clips of ``lengths`` mel frames (for the bench's utilisation)."""

    # --------------------------------------------------------------------------- HF's own path
    @abstractmethod
    def hf_inputs(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """HF's feature extractor on one 16 kHz clip as the model's processor calls it.

        ``extractor`` is the featurizer's ``hf_extractor()``. Returns ``(input_features, frames)``: the
        extractor's features in HF's layout (``[1, n_mels, F]`` for Whisper's log-mel) and the clip's
        valid frames (the sum of its attention mask).
        """

    @abstractmethod
    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF's model path on HF-layout features: ``[B, n_mels, F]``, valid frames ``[B]`` -> ``[sum rows, D]``.

        The rows of each clip are the ones HF's own code selects (its length helper or its
        output split), never contaudio's rule.
        """

    def oracle(self, encoder: PreTrainedModel, extractor: FeatureExtractionMixin, wav: np.ndarray) -> OracleRows:
        """HF's answer for one clip from its waveform: HF's extractor, then HF's model path on these weights."""

        def ask() -> torch.Tensor:
            features, frames = self.hf_inputs(extractor, wav)
            return self.hf_encode(encoder, features.to(encoder.device, encoder.dtype), torch.tensor([frames]))

        answer = ask_hf(ask)
        if answer.error is None and (placeholders := self.hf_placeholders(extractor, wav)) is not None:
            return replace(answer, placeholders=placeholders)
        return answer

    def hf_placeholders(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> int | None:
        """The audio placeholder tokens the model's own processor (built on ``extractor`` and a tiny tokenizer)
        puts in a prompt holding this clip alone: what ``returns="lm"`` rows must number. None where this object's
        rows are not the LM's (``"tower"`` of a family with a projector, ``"hidden_states"``, Whisper)."""
        return None

    def oracle_from_mel(self, encoder: PreTrainedModel, mel: torch.Tensor) -> OracleRows:
        """HF's model path on a clip given as mel frames ``[M, n_mels]`` (no extractor)."""
        features, frames = self.hf_layout(mel[None].to(encoder.device, encoder.dtype), torch.tensor([mel.shape[0]]))
        return ask_hf(lambda: self.hf_encode(encoder, features, frames))

    def reference_forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """HF's model path on a padded batch as a user would run it (bench's HF column): ``[sum rows, D]``."""
        return self.hf_encode(encoder, *self.hf_layout(mel, lengths))

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """contaudio's ``[B, M_max, n_mels]`` batch -> HF's layout (``[B, n_mels, F]``, F whole windows).

        A family whose HF model takes another layout (time-major, a mask) overrides this.
        """
        features = mel.transpose(1, 2)
        if self.window_frames is not None:
            width = -(-features.shape[2] // self.window_frames) * self.window_frames
            features = torch.nn.functional.pad(features, (0, width - features.shape[2]))
        return features, lengths

    def adapt_features(self, features: Featurizer) -> Featurizer:
        """The checkpoint's featurizer as this family's processor runs it (default: as configured)."""
        return features

    # --------------------------------------------------------------------------- returns= modes
    @property
    def default_returns(self) -> str:
        """The mode ``returns=None`` means: ``"lm"``, or ``"tower"`` for a family without an LM (Whisper)."""
        return "tower" if self.lm_view is None else "lm"

    def view(
        self, returns: str | None, layers: Sequence[int] | None = None, encoder_config: dict[str, Any] | None = None
    ) -> EncoderFamily:
        """This family as ``returns`` (None: :attr:`default_returns`) sees it: the object whose rules, forward,
        oracle and weights a :class:`~contaudio.ContinuousAudioIO` in that mode uses (``self`` for ``"tower"``).

        ``layers`` (``"hidden_states"`` only): indices into HF's ``output_hidden_states`` tuple (0: the
        input of the first layer, ``i``: the output of layer ``i``, negative from the end), resolved
        against ``encoder_config``'s layer count.
        """
        returns = self.default_returns if returns is None else returns
        if returns not in RETURNS:
            raise ValueError(f"returns must be one of {RETURNS}, got {returns!r}")
        if returns != "hidden_states" and layers is not None:
            raise ValueError(f"layers={list(layers)} only applies to returns='hidden_states' (got returns={returns!r})")
        if returns == "tower":
            return self
        if returns == "lm":
            if self.lm_view is None:
                raise ValueError(
                    f"{self.name} has no language model, so no returns='lm': use returns='tower' "
                    f"(its encoder's rows) or returns='hidden_states'"
                )
            return self if self.lm_view == "tower" else self.lm_view()
        if encoder_config is None:
            raise ValueError("returns='hidden_states' needs the encoder config (its layer count)")
        return HiddenStatesView(self, resolve_layers(layers, self.num_layers(encoder_config)))

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        """The config dict the module this object builds takes: the encoder's (a view with a projector: the model's)."""
        return encoder_config

    def trim(self, encoder: PreTrainedModel) -> None:
        """Drop what this object's forward never runs from a built encoder (``hidden_states``: the deeper layers)."""
        return None

    def num_layers(self, encoder_config: dict[str, Any]) -> int:
        """The encoder's layer count (HF's ``output_hidden_states`` holds one more: the first layer's input)."""
        return int(encoder_config[self.num_layers_key])

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """Rows of the encoder's hidden states (each layer's) for ``mel_len`` frames."""
        raise NotImplementedError(f"{self.name}: returns='hidden_states' is not available yet; use 'lm' or 'tower'")

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """The fast forward up to the deepest of ``layers`` (resolved, ascending): ``[len(layers), sum rows, D]``."""
        raise NotImplementedError(f"{self.name}: returns='hidden_states' is not available yet; use 'lm' or 'tower'")

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """HF's forward with ``output_hidden_states=True`` on HF-layout features: ``[len(layers), sum rows, D]``."""
        raise NotImplementedError(f"{self.name}: returns='hidden_states' has no HF oracle yet")

    # --------------------------------------------------------------------------- config reading
    def encoder_config(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The encoder's config dict inside a checkpoint's ``config.json`` dict (the first of the model type's key
        paths that is there: one ``model_type`` may be saved nested two ways, see :func:`config_path_options`)."""
        paths = config_path_options(self.config_paths[raw["model_type"]])
        for path in paths:
            node = raw
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    break
                node = node[key]
            else:
                return dict(node)
        tried = " or ".join(".".join(path) for path in paths)
        raise ValueError(f"{self.name}: config.json has no {tried}; is this a {self.name} checkpoint?")

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """Width of the encoder's output rows, read through the HF config class.

        The class applies its ``attribute_map`` (Voxtral names ``d_model`` ``hidden_size``).
        """
        config = self.config_class(**{k: v for k, v in encoder_config.items() if k != "model_type"})
        return int(getattr(config, self.output_dim_key))

    def __repr__(self) -> str:
        return f"<encoder family {self.name}>"


RETURNS = ("lm", "tower", "hidden_states")  # what a ContinuousAudioIO returns per clip (its ``returns=``)


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """``layers`` as indices into HF's ``output_hidden_states`` tuple of an encoder with ``num_layers`` layers
    (``num_layers + 1`` entries: 0 is the first layer's input, ``i`` layer ``i``'s output), negatives resolved,
    in the order given.

    >>> resolve_layers([0, -1, 2], 4)
    (0, 4, 2)
    >>> resolve_layers([5], 4)
    Traceback (most recent call last):
    ...
    ValueError: layers=[5]: this encoder has 4 layers, so hidden states 0..4 (or -5..-1); 5 is out of range
    """
    if not layers:
        raise ValueError("returns='hidden_states' needs layers=[...], the hidden states to return (e.g. [-1])")
    count = num_layers + 1
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"layers must be integers, got {index!r} in {list(layers)}")
        if not -count <= index < count:
            raise ValueError(
                f"layers={list(layers)}: this encoder has {num_layers} layers, so hidden states 0..{num_layers} "
                f"(or -{count}..-1); {index} is out of range"
            )
    resolved = tuple(int(index) % count for index in layers)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers={list(layers)} names a hidden state twice ({list(resolved)} once resolved)")
    return resolved


class HiddenStatesView(EncoderFamily):
    """A family's ``returns="hidden_states"``: per clip ``[len(layers), T, D_tower]``, the hidden states HF's
    ``output_hidden_states=True`` gives for the clip alone, with only the layers up to the deepest one run.

    Everything but the rows, the forward and the oracle's model path is the family's own.
    """

    mode = "hidden_states"

    def __init__(self, tower: EncoderFamily, layers: tuple[int, ...]) -> None:
        for klass in reversed(type(tower).__mro__):  # the family's class attributes (name, prefixes, windows, ...)
            self.__dict__.update({k: v for k, v in vars(klass).items() if not k.startswith("_") and is_data(v)})
        self.mode, self.tower, self.layers, self.leading_shape = "hidden_states", tower, layers, (len(layers),)
        self.returns = f"hidden states {list(layers)} of the tower (HF's output_hidden_states indices), per clip"
        self.oracle_path = (
            f"{tower.encoder_class.__name__}(output_hidden_states=True) on the clip alone: hidden_states{list(layers)}"
        )

    def rows(self, mel_len: IntOrTensor) -> IntOrTensor:  # type: ignore[override]
        return self.tower.hidden_rows(mel_len)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.tower.hidden_forward(encoder, mel, lengths, self.layers)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return self.tower.flops(config, lengths)  # an upper bound: the whole tower

    def hf_inputs(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        return self.tower.hf_inputs(extractor, wav)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return self.tower.hf_hidden_states(encoder, input_features, frames, self.layers)

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tower.hf_layout(mel, lengths)

    def adapt_features(self, features: Featurizer) -> Featurizer:
        return self.tower.adapt_features(features)

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        return int(encoder_config[self.tower.hidden_dim_key])

    def trim(self, encoder: PreTrainedModel) -> None:
        """Keep the layers up to the deepest requested; the modules after the stack become identities (HF's
        forward still runs through them, for the oracle, but nothing there is built or trained)."""
        if self.tower.final_norm and max(self.layers) < int(getattr(encoder.config, self.tower.num_layers_key)):
            encoder.set_submodule(self.tower.final_norm, nn.Identity())  # HF would put it in a middle entry
        layers = encoder.get_submodule(self.tower.layers_attr)  # a dotted path where the stack is nested
        # at least one layer stays: HF records hidden state 0 (the first layer's input) only when a layer runs
        encoder.set_submodule(self.tower.layers_attr, layers[: max(*self.layers, 1)])
        for name in self.tower.head_modules:
            encoder.set_submodule(name, nn.Identity())

    def __repr__(self) -> str:
        return f"<encoder family {self.name}, hidden_states {list(self.layers)}>"


def is_data(value: object) -> bool:
    """A plain class attribute (a value or a class; not a method, property or descriptor)."""
    return not isinstance(value, (FunctionType, staticmethod, classmethod, property))


def config_path_options(paths: tuple[str, ...] | tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    """A ``config_paths`` entry as the key paths to try in order: one path (keys), or several (tuples of keys).

    >>> config_path_options(("thinker_config", "audio_config")), config_path_options(())
    ((('thinker_config', 'audio_config'),), ((),))
    >>> config_path_options((("audio_config",), ("thinker_config", "audio_config")))
    (('audio_config',), ('thinker_config', 'audio_config'))
    """
    if paths and all(isinstance(path, tuple) for path in paths):
        return paths
    return (paths,)


FAMILIES: dict[str, EncoderFamily] = {}
FamilyClass = TypeVar("FamilyClass", bound=type[EncoderFamily])


def register(cls: FamilyClass) -> FamilyClass:
    """Class decorator: add one instance of the family ``cls`` to the registry (its model types must be new)."""
    if cls.name in FAMILIES:
        raise ValueError(f"encoder family {cls.name!r} is already registered")
    taken = {mt for f in FAMILIES.values() for mt in f.config_paths}
    if clash := taken & set(cls.config_paths):
        raise ValueError(f"model types {sorted(clash)} already belong to another family")
    FAMILIES[cls.name] = cls()
    return cls


def get_family(name: str) -> EncoderFamily:
    """Look a family up by name; a wrong name lists the ones that exist, an unavailable one says what it needs."""
    if name in UNAVAILABLE:
        raise FamilyUnavailableError(UNAVAILABLE[name].message())
    try:
        return FAMILIES[name]
    except KeyError:
        known = f"known: {', '.join(sorted(FAMILIES))}{unavailable_note()}"
        raise KeyError(f"unknown encoder family {name!r}; {known}") from None


def packed_stack_families() -> list[str]:
    """The families whose layers run through contaudio's packed windowed stack (``graph_stack``): what
    ``cuda_graphs=True`` replays from a graph and ``packed.compiled_layers`` compiles."""
    return sorted(name for name, family in FAMILIES.items() if family.graph_stack)


def family_for_model_type(model_type: str) -> EncoderFamily:
    """The family whose checkpoints carry ``model_type`` in their config.json."""
    for family in FAMILIES.values():
        if model_type in family.config_paths:
            return family
    known = sorted(mt for f in FAMILIES.values() for mt in f.config_paths)
    raise ValueError(
        f"no encoder family handles model_type {model_type!r}; supported model types: {', '.join(known)}"
        f"{unavailable_note()}"
    )


# ------------------------------------------------------------------ families the installed transformers lacks
# The first transformers release holding a class or module contaudio's families use, where it is newer than some
# transformers 5.x (checked in the release wheels on PyPI). Keys are dotted paths; a module's entry covers what is
# in it. A family needing a newer name than the table knows still loads as unavailable, with a vaguer message.
TRANSFORMERS_SINCE: dict[str, str] = {
    "transformers.models.qwen3_asr": "5.13.0",
    "transformers.models.qwen2_5_omni.modeling_qwen2_5_omni.Qwen2_5OmniThinkerModel": "5.21.0",
    "transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe.Qwen3OmniMoeThinkerModel": "5.21.0",
}
MISSING_NAME = re.compile(r"cannot import name '(\w+)'")  # CPython's message for a failed ``from m import name``


@dataclass(frozen=True)
class UnavailableFamily:
    """A family whose module needs ``missing`` (a dotted transformers path), which ``installed`` lacks.

    ``needs``: the first transformers release that has it (None when :data:`TRANSFORMERS_SINCE` does not know).
    """

    name: str
    missing: str
    installed: str
    needs: str | None

    def message(self) -> str:
        """What is missing and what to install.

        >>> print(UnavailableFamily("qwen3_asr", "transformers.models.qwen3_asr", "5.12.0", "5.13.0").message())
        ... # doctest: +NORMALIZE_WHITESPACE
        encoder family 'qwen3_asr' is unavailable: it needs transformers.models.qwen3_asr, which the installed
        transformers 5.12.0 lacks (first in transformers 5.13.0): pip install 'transformers>=5.13.0'
        """
        fix = f"(first in transformers {self.needs}): pip install 'transformers>={self.needs}'"
        if self.needs is None:
            fix = "(a later transformers release has it): pip install -U transformers"
        return (
            f"encoder family {self.name!r} is unavailable: it needs {self.missing}, which the installed "
            f"transformers {self.installed} lacks {fix}"
        )

    @property
    def requirement(self) -> str:
        """``"transformers>=5.13.0"`` (or ``"transformers>5.12.0"`` when the first release is not known)."""
        return f"transformers>={self.needs}" if self.needs else f"transformers>{self.installed}"


class FamilyUnavailableError(ImportError):
    """The family exists in contaudio but the installed transformers lacks a class it needs."""


UNAVAILABLE: dict[str, UnavailableFamily] = {}


def missing_transformers_name(err: ImportError) -> str | None:
    """The dotted transformers path an ImportError could not find, or None when it is about something else.

    >>> missing_transformers_name(ImportError("cannot import name 'Foo' from 'transformers.models.x' (x.py)",
    ...                                       name="transformers.models.x"))
    'transformers.models.x.Foo'
    >>> missing_transformers_name(ModuleNotFoundError("No module named ...", name="transformers.models.x"))
    'transformers.models.x'
    >>> missing_transformers_name(ModuleNotFoundError("No module named 'lhotse'", name="lhotse")) is None
    True
    """
    module = err.name or ""
    if module != "transformers" and not module.startswith("transformers."):
        return None
    if isinstance(err, ModuleNotFoundError):
        return module
    found = MISSING_NAME.search(str(err))
    return f"{module}.{found.group(1)}" if found else None


def first_transformers_with(path: str) -> str | None:
    """The first transformers release that has ``path`` (its own entry, else its module's, else its folder's).

    >>> first_transformers_with("transformers.models.qwen3_asr.modeling_qwen3_asr.Qwen3ASREncoder")
    '5.13.0'
    """
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        if (version := TRANSFORMERS_SINCE.get(".".join(parts[:end]))) is not None:
            return version
    return None


def import_families(modules: Iterable[str], package: str = "contaudio.encoders") -> None:
    """Import each family module (named as its family), which registers it; one that needs a transformers name
    the installed transformers lacks goes to :data:`UNAVAILABLE` instead. Any other import error propagates."""
    for module in modules:
        try:
            importlib.import_module(f"{package}.{module}")
        except ImportError as err:
            missing = missing_transformers_name(err)
            if missing is None:
                raise
            UNAVAILABLE[module] = UnavailableFamily(
                module, missing, transformers.__version__, first_transformers_with(missing)
            )


def unavailable_note() -> str:
    """``"; unavailable with transformers X: a (needs transformers>=Y), ..."`` for error messages, or ``""``."""
    if not UNAVAILABLE:
        return ""
    names = ", ".join(f"{f.name} (needs {f.requirement})" for f in UNAVAILABLE.values())
    return f"; unavailable with transformers {transformers.__version__}: {names}"
