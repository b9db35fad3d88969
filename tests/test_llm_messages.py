"""How the host shapes a plugin's LLM call and judges the reply (pure functions).

Proven on plain values: the structured prompt (JSON directive, schema name, sorted
schema, input blocks in order, image bytes as a data URL), what is asked of the
provider (`response_format`), fenced and loose JSON parsed, schema validation always
applied (a mismatch is `content_type: "text"` with the reason, never an exception),
and the size limits with messages that say what to do.
"""

from __future__ import annotations

import base64

import pytest

from aogstream.host import llm_gate as g
from aogstream.host import llm_messages as lm

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_structured_prompt_holds_directive_schema_and_inputs_in_order():
    png = base64.b64encode(b"\x89PNG-bytes").decode()
    shaped = lm.structured_messages(
        instructions=" Count. ", inputs=[{"type": "text", "text": "one"},
                                          {"type": "image", "data": png},
                                          {"type": "text", "text": "two"}],
        json_schema=SCHEMA, json_mode=False, schema_name="count", system_prompt="Be brief.")
    system, user = shaped.messages
    assert system == {"role": "system", "content": "Be brief.\n\n" + lm.JSON_DIRECTIVE}
    header, first, image, second = user["content"]
    assert header["text"].startswith("Count.\n\nSchema name: count\n\nJSON schema:\n{")
    assert '"properties": {"n": {"type": "integer"}}, "required"' in header["text"]
    assert (first["text"], second["text"]) == ("one", "two")
    assert image["image_url"]["url"] == f"data:image/png;base64,{png}"
    assert shaped.images == 1


def test_no_json_asked_means_no_directive_and_no_format():
    shaped = lm.structured_messages(instructions="x", inputs=[{"type": "text", "text": "y"}],
                                    json_schema=None, json_mode=False, schema_name=None,
                                    system_prompt=None)
    assert [m["role"] for m in shaped.messages] == ["user"]
    assert lm.response_format(None, False) is None
    assert lm.response_format(None, True) == {"type": "json_object"}
    fmt = lm.response_format(SCHEMA, False)
    assert fmt["json_schema"]["schema"] == SCHEMA
    assert fmt["json_schema"]["name"] == lm.SCHEMA_FORMAT_NAME


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"instructions": " ", "inputs": [{"type": "text", "text": "y"}]}, "instructions"),
    ({"instructions": "x", "inputs": []}, "at least one input block"),
    ({"instructions": "x", "inputs": [{"type": "audio"}]}, "Unknown input block type"),
    ({"instructions": "x", "inputs": ["text"]}, "Unsupported input block: str"),
    ({"instructions": "x", "inputs": [{"type": "text"}]}, "requires 'text' string"),
    ({"instructions": "x", "inputs": [{"type": "image"}]}, "requires 'data' bytes or 'url'"),
    ({"instructions": "x", "inputs": [{"type": "image", "url": "file:///etc/passwd"}]},
     "http(s) or data: URL"),
    ({"instructions": "x", "inputs": [{"type": "text", "text": "y"}],
      "json_schema": {"type": 3}}, "not a valid JSON Schema"),
])
def test_bad_structured_inputs_are_value_errors(kwargs, says):
    args = {"json_schema": None, "json_mode": False, "schema_name": None,
            "system_prompt": None, **kwargs}
    with pytest.raises(ValueError, match=None) as info:
        lm.structured_messages(**args)
    assert says in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ('```json\n{"n": 1}\n```', {"n": 1}),
    ('```\n{"n": 2}\n```', {"n": 2}),
    ('Here you go: ```JSON {"n": 3} ``` hope it helps', {"n": 3}),
    ('  {"n": 4}  ', {"n": 4}),
])
def test_fenced_and_loose_json_is_parsed_and_validated(text, expected):
    assert lm.parse_structured(text, SCHEMA, False) == (expected, "json", "")


def test_replies_that_are_not_json_or_miss_the_schema_come_back_as_text():
    assert lm.parse_structured("I cannot do that.", SCHEMA, False)[:2] == (None, "text")
    parsed, kind, reason = lm.parse_structured('{"n": "four"}', SCHEMA, False)
    assert (parsed, kind) == (None, "text") and "did not match the schema" in reason
    assert lm.parse_structured('{"n": 1}', None, False) == (None, "text", "")
    assert lm.parse_structured("[1, 2]", None, True) == ([1, 2], "json", "")


def test_chat_messages_keep_strings_and_flatten_for_text_routes():
    shaped = lm.chat_messages([{"role": "system", "content": "s"},
                               {"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "text", "text": "b"}]}])
    assert shaped.images == 0
    assert lm.flatten_text(shaped.messages) == [{"role": "system", "content": "s"},
                                                {"role": "user", "content": "a\n\nb"}]


def test_limits_say_what_to_do():
    with pytest.raises(ValueError, match="split the work"):
        lm.chat_messages([{"role": "user", "content": "x" * (g.MAX_TEXT_BYTES + 1)}])
    with pytest.raises(ValueError, match="the limit is"):
        lm.chat_messages([{"role": "user", "content": "x"}] * (g.MAX_MESSAGES + 1))
    with pytest.raises(ValueError, match="role must be one of"):
        lm.chat_messages([{"role": "wizard", "content": "x"}])
