"""A model's own HF processor, built for text and audio only (no image or video processor).

The oracles count the audio placeholders a model's HF processor writes into a prompt for a clip. The
Qwen-Omni processors (``Qwen2_5OmniProcessor``, ``Qwen3OmniMoeProcessor``) also take an image and a video
processor, and transformers checks each argument's class at construction; the video processor needs
torchvision, which contaudio does not depend on. Neither is ever used for a prompt of text and audio,
so :func:`audio_only` builds the processor with a :class:`NoVisionProcessor` in their place: only the class
check of those two arguments is skipped. Everything the processor does with audio is HF's own code (its
extractor call, its count, its placeholder expansion, its tokenizer call)::

    from transformers import Qwen2_5OmniProcessor
    processor = audio_only(Qwen2_5OmniProcessor, extractor, tokenizer)
    out = processor(text=processor.audio_token, audio=wav)  # a prompt holding the clip alone

A prompt with images or videos fails loudly, saying why (:class:`NoVisionProcessor` answers nothing but the
attributes the text path reads). The tokenizer can be :func:`contaudio.encoders.tokenizers.tiny_tokenizer`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, TypeVar

from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.feature_extraction_utils import FeatureExtractionMixin

__all__ = ["NO_VISION", "VISION_ATTRIBUTES", "NoVisionProcessor", "audio_only", "audio_only_class"]

VISION_ATTRIBUTES = ("image_processor", "video_processor")  # what audio_only stands in for (names contain these)
FEATURE_EXTRACTOR, TOKENIZER = "feature_extractor", "tokenizer"
Processor = TypeVar("Processor", bound=ProcessorMixin)


NO_VISION = (
    "this processor was built with contaudio.encoders.processors.audio_only: it has no image or video processor, so "
    "it takes text and audio only; build the processor with its real image and video processors (they need "
    "torchvision) for prompts with images or videos"
)


@dataclass(frozen=True)
class NoVisionProcessor:
    """Stands in for the image or video processor of a processor that only ever sees text and audio.

    It holds only what a text+audio call reads from it: ``merge_size`` (transformers 5.14's Qwen-Omni processors
    compute an image's token count with it on every call, whether or not the prompt holds an image; no audio count
    depends on it) and ``model_input_names`` (read when the processor lists its inputs). Reading anything else
    raises ``AttributeError`` saying why (so HF's own ``getattr(..., default)`` fallbacks still work); calling it
    raises ``ValueError``.
    """

    merge_size: int = 2
    model_input_names: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(name)
        raise AttributeError(f"{NO_VISION} (HF's processor asked its image/video processor for {name!r})")

    def __call__(self, *args: object, **kwargs: object) -> Any:
        raise ValueError(NO_VISION)


@functools.cache
def audio_only_class(processor_class: type[Processor]) -> type[Processor]:
    """``processor_class`` with one change: its constructor's class check accepts a :class:`NoVisionProcessor` for
    its image and video processors (every other argument is checked as HF checks it); ``to_dict`` (its repr and
    JSON) writes those as null.

    >>> from transformers import Qwen2_5OmniProcessor
    >>> audio_only_class(Qwen2_5OmniProcessor).__name__, audio_only_class(Qwen2_5OmniProcessor).__mro__[1].__name__
    ('AudioOnlyQwen2_5OmniProcessor', 'Qwen2_5OmniProcessor')
    """

    def check_argument_for_proper_class(self: ProcessorMixin, argument_name: str, argument: object) -> type:
        if isinstance(argument, NoVisionProcessor) and is_vision(argument_name):
            return NoVisionProcessor
        return processor_class.check_argument_for_proper_class(self, argument_name, argument)

    def to_dict(self: ProcessorMixin) -> dict[str, Any]:  # HF's, the stand-ins written as null (repr, JSON)
        return {key: None if isinstance(value, NoVisionProcessor) else value
                for key, value in processor_class.to_dict(self).items()}  # fmt: skip

    namespace = {
        "check_argument_for_proper_class": check_argument_for_proper_class,
        "to_dict": to_dict,
        "__doc__": f"HF's {processor_class.__name__} for text and audio only (see contaudio.encoders.processors).",
        "__module__": __name__,
    }
    return type(f"AudioOnly{processor_class.__name__}", (processor_class,), namespace)


def audio_only(
    processor_class: type[Processor],
    feature_extractor: FeatureExtractionMixin,
    tokenizer: PreTrainedTokenizerBase,
    **kwargs: Any,
) -> Processor:
    """HF's ``processor_class`` around ``feature_extractor`` and ``tokenizer``, with a :class:`NoVisionProcessor` for
    each image or video processor it takes: a processor for prompts of text and audio, whose audio path is HF's.

    ``kwargs`` go to the processor's constructor (e.g. ``chat_template``). A processor taking anything else than
    these (another tokenizer, an audio tokenizer's model, ...) is refused, naming it.

    >>> from transformers import Qwen2_5OmniProcessor, WhisperFeatureExtractor
    >>> from contaudio.encoders.tokenizers import tiny_tokenizer
    >>> names = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
    ...          "audio_bos_token": "<a>", "audio_eos_token": "</a>", "vision_bos_token": "<v>",
    ...          "vision_eos_token": "</v>"}
    >>> processor = audio_only(Qwen2_5OmniProcessor, WhisperFeatureExtractor(feature_size=128),
    ...                        tiny_tokenizer(list(names.values()), named=names))
    >>> out = processor(text="<|AUDIO|>", audio=[0.0] * 16000)
    >>> audio_token_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    >>> out["input_ids"][0].count(audio_token_id)  # 1 s: 100 frames -> 50 conv rows -> 25 tokens
    25
    """
    arguments: dict[str, Any] = {}
    for attribute in processor_class.get_attributes():
        if is_vision(attribute):
            arguments[attribute] = NoVisionProcessor()
        elif attribute == FEATURE_EXTRACTOR:
            arguments[attribute] = feature_extractor
        elif attribute == TOKENIZER:
            arguments[attribute] = tokenizer
        else:
            raise ValueError(
                f"audio_only({processor_class.__name__}): the processor also takes {attribute!r}, which audio_only "
                f"cannot stand in for (it supplies {FEATURE_EXTRACTOR!r} and {TOKENIZER!r}, and a stand-in for "
                f"{' and '.join(VISION_ATTRIBUTES)}); build this processor directly"
            )
    return audio_only_class(processor_class)(**arguments, **kwargs)


def is_vision(attribute: str) -> bool:
    """Whether a processor's constructor argument is an image or video processor (HF names them so).

    >>> is_vision("video_processor"), is_vision("feature_extractor")
    (True, False)
    """
    return any(name in attribute for name in VISION_ATTRIBUTES)
