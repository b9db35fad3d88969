"""`stream_options.include_usage` when the provider reports no usage: the gateway counts.

Real parts: the default test gateway subprocess with the echo plugin (a real plugin
process that streams five `tokN` chunks and reports no token counts) and the official
`openai` SDK over loopback.

Proven: the stream ends with exactly one usage chunk (`choices: []`) after the chunk with
the finish reason, every other chunk has `usage: null`, the completion count is the
number of streamed text chunks and the prompt count the gateway's estimate (characters
/ 4); without the option no usage chunk is sent.
"""

from __future__ import annotations

import math

import openai
from conftest import Gateway

PROMPT = "Count to five, please, slowly and clearly."


def test_gateway_counts_usage_when_the_provider_does_not(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0,
                       timeout=30) as sdk:
        chunks = list(sdk.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": PROMPT}], stream=True,
            stream_options={"include_usage": True}))
        last = chunks[-1]
        assert not last.choices and last.usage is not None
        assert all(c.choices and c.usage is None for c in chunks[:-1])
        texts = [c.choices[0].delta.content for c in chunks[:-1] if c.choices[0].delta.content]
        assert "".join(texts).split() == [f"tok{i}" for i in range(5)]
        assert last.usage.completion_tokens == len(texts)
        assert last.usage.prompt_tokens == math.ceil(len(PROMPT) / 4)
        assert last.usage.total_tokens == last.usage.prompt_tokens + len(texts)
        assert chunks[-2].choices[0].finish_reason == "stop"

        plain = list(sdk.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": PROMPT}], stream=True))
        assert all(c.choices for c in plain)
