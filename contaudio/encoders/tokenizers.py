"""A tiny tokenizer built in code, for running a model's own HF processor without its hub tokenizer.

A multimodal processor (``AudioFlamingo3Processor``, ``GlmAsrProcessor``, ``Qwen3OmniMoeProcessor``, ...)
needs a tokenizer only to find its audio placeholder token and to tokenize the prompt it expands.
The number of placeholders it writes for a clip, and the audio features it returns, do not depend on
the rest of the vocabulary, so the oracles build the processor around :func:`tiny_tokenizer` holding
just those tokens: no download, no hub, the processor's own audio path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

UNK_TOKEN = "<unk>"  # every word outside the tiny vocabulary
PAD_TOKEN = "<pad>"  # processors tokenize with padding=True, which needs a pad token even for one prompt


def tiny_tokenizer(special_tokens: Sequence[str], named: Mapping[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is ``<unk>``, ``<pad>`` and ``special_tokens`` (in that order).

    ``named``: attributes a processor reads off its tokenizer (``{"audio_token": "<|AUDIO|>"}`` gives
    ``tok.audio_token`` and ``tok.audio_token_id``), each naming one of ``special_tokens``.

    The special tokens are split out of any text, adjacent or not, and each maps to one id, so a
    processor's expanded placeholders (``"<sound><sound>..."``) tokenize to one id each. Any other word
    becomes ``<unk>``.

    >>> tok = tiny_tokenizer(["<sound>"])
    >>> tok("hi <sound><sound> there")["input_ids"], tok.convert_tokens_to_ids("<sound>")
    ([0, 2, 2, 0], 2)
    """
    tokens = list(dict.fromkeys([UNK_TOKEN, PAD_TOKEN, *special_tokens]))
    if len(tokens) != len(special_tokens) + 2:
        raise ValueError(
            f"tiny_tokenizer: special tokens must be distinct and differ from {UNK_TOKEN!r} and {PAD_TOKEN!r}, "
            f"got {list(special_tokens)}"
        )
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(tokens)
    if unknown := set((named or {}).values()) - set(special_tokens):
        raise ValueError(f"tiny_tokenizer: named tokens {sorted(unknown)} are not among the special tokens")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN, extra_special_tokens=dict(named or {})
    )
