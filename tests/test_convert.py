"""Flavor conversion: built-in templates round-trip, passthrough, streams, template errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aogstream.convert import (
    Converter,
    ConvertError,
    FlavorRegistry,
    TemplateError,
    UnknownFlavorError,
    load_plugin_templates,
    parse_flavor,
)
from aogstream.convert.engine import encode_body

CONV = Converter()


def j(value) -> bytes:
    return json.dumps(value).encode()


def to_aog(flavor: str, service: str):
    return CONV.between(service, flavor, "aog")  # app flavor → AOG provider


def from_aog(flavor: str, service: str):
    return CONV.between(service, "aog", flavor)  # AOG app → flavor provider


def request_round_trip(flavor: str, service: str, body: dict) -> tuple[dict, dict]:
    """flavor request → AOG request → flavor request."""
    aog = json.loads(to_aog(flavor, service).request(j(body)).body)
    back = json.loads(from_aog(flavor, service).request(j(aog)).body)
    return aog, back


def response_round_trip(flavor: str, service: str, body: dict) -> tuple[dict, dict]:
    """flavor response → AOG response → flavor response (provider speaks the flavor)."""
    aog = json.loads(from_aog(flavor, service).response(j(body), id="7").body)
    back = json.loads(to_aog(flavor, service).response(j(aog), id="7").body)
    return aog, back


# ---------------------------------------------------------------- built-ins load


def test_builtin_flavors_load_and_cover_services():
    reg = FlavorRegistry()
    assert {"aog", "openai", "ollama"} <= set(reg.known())
    assert {"chat", "generate", "embed", "models", "speech-to-text", "text-to-speech"} <= set(
        reg.get("openai").services
    )
    assert {"chat", "generate", "embed", "models"} <= set(reg.get("ollama").services)
    for name in reg.known():
        assert reg.get(name).name == name


# ---------------------------------------------------------------- passthrough


@pytest.mark.parametrize("flavor", ["aog", "openai", "ollama"])
def test_same_flavor_passes_bytes_untouched(flavor):
    conv = CONV.between("chat", flavor, flavor)
    body = b'{"not": "even parsed",  "x": [1,2]}'
    assert conv.request(body).body is body
    assert conv.response(body).body is body
    stream = conv.stream()
    chunk = b"definitely not json"
    assert stream.convert(chunk) is chunk
    assert stream.prologue == [] and stream.epilogue == []


def test_media_bodies_are_never_converted():
    body = b"RIFF....WAVEfmt "
    out = CONV.between("chat", "aog", "openai").response(body, {"Content-Type": "audio/wav"})
    assert out.body is body


# ---------------------------------------------------------------- openai


def test_openai_chat_request_round_trip():
    req = {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["\n"],
        "max_tokens": 12,
    }
    aog, back = request_round_trip("openai", "chat", req)
    assert aog["max_tokens"] == 12 and aog["messages"] == req["messages"] and aog["stream"]
    for key in req:
        assert back[key] == req[key], key
    conv = to_aog("openai", "chat")
    assert conv.request(j(req)).headers["Content-Type"] == "application/json"
    # max_completion_tokens is the newer name for the same limit
    aog2 = json.loads(conv.request(j({"messages": [], "max_completion_tokens": 5})).body)
    assert aog2["max_tokens"] == 5
    # the scheduler's model choice wins over the body's
    aog3 = json.loads(conv.request(j(req), model="chosen").body)
    assert aog3["model"] == "chosen"


def test_openai_chat_response_round_trip():
    resp = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"},
             "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    aog, back = response_round_trip("openai", "chat", resp)
    assert aog["message"]["content"] == "Hello" and aog["finished"] is True
    assert aog["finish_reason"] == "length"
    assert aog["created_at"].startswith("2023-11-14T22:13:20")
    assert back == resp


def test_openai_chat_stream_chunks():
    prov = from_aog("openai", "chat").stream(model="gpt-x", id="9")
    assert prov.content_type == "text/event-stream"
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1700000000,
             "model": "gpt-x",
             "choices": [{"index": 0, "delta": {"content": "He"}, "finish_reason": None}]}
    aog = json.loads(prov.convert(j(chunk)))
    assert aog["message"]["content"] == "He" and aog["finished"] is False
    assert prov.convert(b" [DONE] ") is None
    assert prov.convert(b"") is None
    last = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    aog_last = json.loads(prov.convert(j(last)))
    assert aog_last["finished"] is True and aog_last["finish_reason"] == "stop"
    # AOG → openai app side
    app = to_aog("openai", "chat").stream(id="9")
    assert app.epilogue == [b"[DONE]"] and app.prologue == []
    back = json.loads(app.convert(j(aog)))
    assert back["object"] == "chat.completion.chunk"
    assert back["choices"][0]["delta"]["content"] == "He"
    assert back["choices"][0]["finish_reason"] is None and back["created"] == 1700000000
    final = json.loads(app.convert(j({"id": "x", "model": "m", "message": {"role": "assistant",
                                      "content": ""}, "finished": True,
                                      "finish_reason": "stop"})))
    assert final["choices"][0]["finish_reason"] == "stop"


def test_openai_generate_round_trip():
    req = {"model": "m", "prompt": "Once", "max_tokens": 4, "stream": False, "temperature": 0}
    aog, back = request_round_trip("openai", "generate", req)
    assert aog["prompt"] == "Once" and back == req
    resp = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m",
            "choices": [{"index": 0, "text": " upon", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    aog, back = response_round_trip("openai", "generate", resp)
    assert aog["response"] == " upon" and back == resp
    prov = from_aog("openai", "generate").stream()
    chunk = {"id": "c", "object": "text_completion", "created": 1700000000, "model": "m",
             "choices": [{"index": 0, "text": " a", "finish_reason": None}]}
    aog = json.loads(prov.convert(j(chunk)))
    assert aog["response"] == " a" and aog["finished"] is False
    back = json.loads(to_aog("openai", "generate").stream().convert(j(aog)))
    assert back == chunk


def test_openai_embed_round_trip():
    req = {"model": "e", "input": ["a", "b"], "encoding_format": "float"}
    _, back = request_round_trip("openai", "embed", req)
    assert back == req
    _, back1 = request_round_trip("openai", "embed", {"model": "e", "input": ["only"]})
    assert back1["input"] == ["only"]
    resp = {"object": "list", "model": "e",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    aog, back = response_round_trip("openai", "embed", resp)
    assert aog["data"] == [{"index": 0, "embedding": [0.1, 0.2]}] and aog["id"] == "7"
    assert back == resp


def test_openai_models_round_trip():
    resp = {"object": "list", "data": [{"id": "a", "object": "model", "created": 1700000000,
                                        "owned_by": "me"}]}
    aog, back = response_round_trip("openai", "models", resp)
    assert aog["models"][0]["name"] == "a"
    assert back == resp


def test_openai_speech_to_text_round_trip():
    req = {"model": "whisper-1", "file": "UklGRg==", "language": "en"}
    aog, back = request_round_trip("openai", "speech-to-text", req)
    assert aog["audio"] == "UklGRg==" and back["file"] == "UklGRg=="
    assert back["language"] == "en"
    resp = {"task": "transcribe", "text": "go forward", "language": "en", "duration": 3725.5,
            "segments": [{"id": 0, "start": 3661.25, "end": 3725.5, "text": "go forward"}]}
    aog, back = response_round_trip("openai", "speech-to-text", resp)
    seg = aog["segments"][0]
    assert seg["begin_time"] == 3661250 and seg["start"] == "01:01:01,250"
    assert seg["end"] == "01:02:05,500" and aog["text"] == "go forward"
    assert back == resp


def test_openai_text_to_speech_request_round_trip():
    req = {"model": "tts-1", "input": "Hello there", "voice": "alloy", "response_format": "mp3"}
    aog, back = request_round_trip("openai", "text-to-speech", req)
    assert aog["text"] == "Hello there" and aog["response_format"] == "wav"
    assert back["input"] == "Hello there" and back["voice"] == "alloy"


# ---------------------------------------------------------------- ollama


def test_ollama_chat_request_round_trip():
    req = {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "stream": False,
           "options": {"temperature": 0.1, "num_predict": 8, "seed": 1, "top_k": 5}}
    aog, back = request_round_trip("ollama", "chat", req)
    assert aog["max_tokens"] == 8 and aog["top_k"] == 5 and aog["stream"] is False
    assert back == req
    # Ollama streams unless told not to
    aog2 = json.loads(to_aog("ollama", "chat").request(j({"messages": []})).body)
    assert aog2["stream"] is True


def test_ollama_chat_response_round_trip():
    resp = {"model": "llama", "created_at": "2023-08-04T19:22:45.499127Z",
            "message": {"role": "assistant", "content": "Hi!"}, "done": True,
            "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 2}
    aog, back = response_round_trip("ollama", "chat", resp)
    assert aog["finished"] is True and aog["usage"]["total_tokens"] == 7
    assert back == resp


def test_ollama_chat_stream_chunks():
    prov = from_aog("ollama", "chat").stream(id="5")
    assert prov.content_type == "text/event-stream"
    chunk = {"model": "llama", "created_at": "2023-08-04T19:22:45.499127Z",
             "message": {"role": "assistant", "content": "Hel"}, "done": False}
    aog = json.loads(prov.convert(j(chunk)))
    assert aog["message"]["content"] == "Hel" and aog["finished"] is False and aog["id"] == "5"
    app = to_aog("ollama", "chat").stream()
    assert app.content_type == "application/x-ndjson" and app.epilogue == []
    assert json.loads(app.convert(j(aog))) == chunk
    last = {**chunk, "message": {"role": "assistant", "content": ""}, "done": True,
            "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 9}
    aog_last = json.loads(prov.convert(j(last)))
    assert aog_last["finished"] is True and aog_last["finish_reason"] == "stop"
    assert json.loads(app.convert(j(aog_last))) == last
    # ollama provider → openai app: the OpenAI client sees finish_reason and [DONE]
    cross = CONV.between("chat", "openai", "ollama").stream()
    oa = json.loads(cross.convert(j(last)))
    assert oa["choices"][0]["finish_reason"] == "stop" and cross.epilogue == [b"[DONE]"]


def test_ollama_generate_round_trip():
    req = {"model": "m", "prompt": "Why", "stream": True, "options": {"num_predict": 3}}
    _, back = request_round_trip("ollama", "generate", req)
    assert back == req
    resp = {"model": "m", "created_at": "2024-01-01T00:00:00Z", "response": "Because",
            "done": True, "done_reason": "length"}
    aog, back = response_round_trip("ollama", "generate", resp)
    assert aog["response"] == "Because" and back == resp
    chunk = {"model": "m", "created_at": "2024-01-01T00:00:00Z", "response": "Be",
             "done": False}
    aog = json.loads(from_aog("ollama", "generate").stream().convert(j(chunk)))
    assert aog["response"] == "Be"
    assert json.loads(to_aog("ollama", "generate").stream().convert(j(aog))) == chunk


@pytest.mark.parametrize("vectors", [[[0.5, 0.25]], [[1.0], [2.0, 3.0]]])
def test_ollama_embed_round_trip(vectors):
    req = {"model": "e", "input": ["x"] * len(vectors)}
    _, back = request_round_trip("ollama", "embed", req)
    assert back == req
    resp = {"model": "e", "embeddings": vectors, "prompt_eval_count": 4}
    aog, back = response_round_trip("ollama", "embed", resp)
    assert [d["embedding"] for d in aog["data"]] == vectors
    assert [d["index"] for d in aog["data"]] == list(range(len(vectors)))
    assert back == resp


def test_ollama_models_round_trip():
    resp = {"models": [{"name": "llama:1b", "model": "llama:1b",
                        "modified_at": "2024-01-01T00:00:00Z", "size": 10, "digest": "abc",
                        "details": {"format": "gguf", "family": "llama",
                                    "parameter_size": "1B", "quantization_level": "Q4_0"}}]}
    aog, back = response_round_trip("ollama", "models", resp)
    assert aog["models"][0]["family"] == "llama"
    assert back == resp


def test_cross_flavor_openai_app_ollama_provider():
    conv = CONV.between("chat", "openai", "ollama")
    req = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
           "stream": True}
    out = json.loads(conv.request(j(req)).body)
    assert out["options"]["num_predict"] == 4 and out["stream"] is True
    resp = {"model": "m", "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "y"}, "done": True,
            "done_reason": "stop"}
    oa = json.loads(conv.response(j(resp)).body)
    assert oa["choices"][0]["message"]["content"] == "y" and oa["created"] == 1704067200


# ---------------------------------------------------------------- errors


def write_template(tmp_path: Path, name: str, text: str) -> Path:
    plugin = tmp_path / "my-plugin"
    (plugin / "templates").mkdir(parents=True, exist_ok=True)
    (plugin / "templates" / f"{name}.yaml").write_text(text)
    return plugin


def test_bad_yaml_names_the_file(tmp_path):
    plugin = write_template(tmp_path, "custom", "name: custom\nservices: [unclosed\n")
    with pytest.raises(TemplateError) as err:
        FlavorRegistry().get("custom", plugin)
    assert "custom.yaml" in str(err.value) and "invalid YAML" in str(err.value)


def test_unknown_converter_names_the_step(tmp_path):
    text = ("name: custom\nservices:\n  chat:\n    request_to_aog:\n      conversion:\n"
            "        - converter: jsonata\n          config: '{\"a\": b}'\n"
            "        - converter: xslt\n          config: x\n")
    with pytest.raises(TemplateError) as err:
        FlavorRegistry().get("custom", write_template(tmp_path, "custom", text))
    msg = str(err.value)
    assert "custom.yaml" in msg and "services.chat.request_to_aog.conversion[1]" in msg
    assert "xslt" in msg and "jsonata" in msg


def test_bad_jsonata_names_the_step():
    text = ("name: custom\nservices:\n  embed:\n    response_to_aog:\n      conversion:\n"
            "        - converter: jsonata\n          config: '{\"a\": ('\n")
    with pytest.raises(TemplateError) as err:
        parse_flavor(text, "plugins/x/templates/custom.yaml")
    msg = str(err.value)
    assert "custom.yaml" in msg and "services.embed.response_to_aog.conversion[0]" in msg
    assert "jsonata" in msg


def test_unknown_flavor_lists_known_ones(tmp_path):
    plugin = tmp_path / "lonely-plugin"
    plugin.mkdir()
    with pytest.raises(UnknownFlavorError) as err:
        load_plugin_templates(plugin, ["nosuch:chat"], FlavorRegistry())
    msg = str(err.value)
    assert "lonely-plugin" in msg and "'nosuch'" in msg and "openai" in msg and "ollama" in msg


def test_plugin_template_is_loaded_for_that_plugin(tmp_path):
    text = ("version: v1\nname: shouty\nservices:\n  chat:\n    stream_response_to_aog:\n"
            "      conversion:\n        - converter: action_if\n"
            "          config: {is_regex: true, pattern: '^: ping', action: drop}\n"
            "        - converter: jsonata\n"
            "          config: '{\"id\": $id, \"message\": {\"role\": \"assistant\","
            " \"content\": $uppercase(text)}, \"finished\": end}'\n")
    plugin = write_template(tmp_path, "shouty", text)
    reg = FlavorRegistry()
    refs = load_plugin_templates(plugin, ["shouty:chat", "ollama:chat"], reg)
    assert refs["shouty:chat"].flavor == "shouty" and refs["ollama:chat"].flavor == "ollama"
    conv = Converter(reg).between("chat", "aog", "shouty", plugin)
    stream = conv.stream(id="1")
    assert stream.convert(b": ping 1") is None
    out = json.loads(stream.convert(b'{"text": "hi", "end": false}'))
    assert out == {"id": "1", "message": {"role": "assistant", "content": "HI"},
                   "finished": False}
    # another plugin does not see it
    with pytest.raises(UnknownFlavorError):
        reg.get("shouty", tmp_path / "other-plugin")


def test_runtime_errors_name_the_step():
    conv = from_aog("openai", "chat")
    with pytest.raises(ConvertError) as err:
        conv.response(b"not json {")
    assert "openai.yaml" in str(err.value) and "response_to_aog" in str(err.value)


def test_unknown_service_lists_services():
    with pytest.raises(TemplateError) as err:
        CONV.between("rerank", "ollama", "aog")
    assert "'rerank'" in str(err.value) and "chat" in str(err.value)


def test_timestamps_with_go_nanoseconds_and_offsets():
    conv = CONV.between("chat", "openai", "ollama")
    for stamp, created in (("2024-01-01T00:00:00.123456789Z", 1704067200),
                           ("2024-01-01T01:00:00+01:00", 1704067200)):
        resp = {"model": "m", "created_at": stamp, "done": True,
                "message": {"role": "assistant", "content": "y"}}
        assert json.loads(conv.response(j(resp)).body)["created"] == created


# ---------------------------------------------------------------- cloud and openvino flavors

OPENAI_LIKE = [
    ("deepseek", "chat"), ("aliyun", "chat"), ("aliyun", "embed"), ("aliyun", "models"),
    ("baidu", "chat"), ("baidu", "embed"), ("tencent", "chat"), ("tencent", "embed"),
    ("tencent", "models"), ("openvino", "chat"), ("openvino", "generate"), ("openvino", "embed"),
]
SAMPLES = {
    "chat": (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
         "temperature": 0.2, "max_tokens": 9},
        {"id": "r1", "object": "chat.completion", "created": 1700000000, "model": "m",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
    ),
    "generate": (
        {"model": "m", "prompt": "p", "stream": False, "max_tokens": 3},
        {"id": "r2", "object": "text_completion", "created": 1700000000, "model": "m",
         "choices": [{"index": 0, "text": "q", "finish_reason": "length"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
    ),
    "embed": (
        {"model": "m", "input": ["a"]},
        {"object": "list", "model": "m",
         "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
         "usage": {"prompt_tokens": 1, "total_tokens": 1}},
    ),
    "models": (
        None,
        {"object": "list", "data": [{"id": "m", "object": "model", "created": 1700000000,
                                     "owned_by": "x"}]},
    ),
}


@pytest.mark.parametrize(("flavor", "service"), OPENAI_LIKE)
def test_openai_compatible_flavors_round_trip(flavor, service):
    req, resp = SAMPLES[service]
    if req is not None:
        _, back = request_round_trip(flavor, service, req)
        assert back == req
    aog, back = response_round_trip(flavor, service, resp)
    assert back == resp
    assert "finished" in aog or "data" in aog or "models" in aog


@pytest.mark.parametrize(("flavor", "epilogue"), [
    ("deepseek", b"[DONE]"), ("aliyun", b"[DONE]"), ("baidu", b"[DONE]"),
    ("tencent", b"[DONE]"), ("openvino", b"data: [DONE]"),
])
def test_openai_compatible_flavors_stream(flavor, epilogue):
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    prov = from_aog(flavor, "chat").stream()
    aog = json.loads(prov.convert(j(chunk)))
    assert aog["message"]["content"] == "x" and aog["finished"] is False
    assert prov.convert(b"[DONE]") is None
    app = to_aog(flavor, "chat").stream()
    back = json.loads(app.convert(j(aog)))
    assert back["choices"][0].pop("delta") == {"role": "assistant", "content": "x"}
    chunk["choices"][0].pop("delta")
    assert back == chunk
    assert app.epilogue == [epilogue]


def test_spec_config_refs_all_resolve():
    reg = FlavorRegistry()
    refs = {
        "aog": ["models", "chat", "generate", "embed", "rerank", "text-to-speech",
                "text-to-image", "speech-to-text", "speech-to-text-ws", "image-to-video",
                "image-to-image", "health"],
        "ollama": ["models", "chat", "generate", "embed"],
        "openai": ["models", "chat"],
        "deepseek": ["chat"],
        "aliyun": ["models", "chat", "embed", "text-to-image", "image-to-image",
                   "speech-to-text", "speech-to-text-ws", "text-to-speech", "image-to-video"],
        "baidu": ["chat", "embed", "text-to-image", "text-to-speech"],
        "tencent": ["models", "chat", "embed", "text-to-image", "text-to-speech"],
        "openvino": ["text-to-image", "speech-to-text", "speech-to-text-ws", "text-to-speech",
                     "chat", "generate", "embed", "rerank"],
    }
    for flavor, services in refs.items():
        for service in services:
            assert reg.resolve_config_ref(f"{flavor}:{service}").name == service


def test_aliyun_async_image_round_trip():
    req = {"model": "wanx2.1-t2i-turbo", "input": {"prompt": "a cat"},
           "parameters": {"n": 2, "size": "512*512"}}
    aog, back = request_round_trip("aliyun", "text-to-image", req)
    assert aog == {"model": "wanx2.1-t2i-turbo", "prompt": "a cat", "n": 2, "size": "512*512"}
    assert back == req
    resp = {"request_id": "r", "output": {"task_id": "t", "task_status": "SUCCEEDED",
                                          "results": [{"url": "https://x/1.png"},
                                                      {"url": "https://x/2.png"}]}}
    aog, back = response_round_trip("aliyun", "text-to-image", resp)
    assert aog["url"] == ["https://x/1.png", "https://x/2.png"] and aog["status"] == "SUCCEEDED"
    assert back == resp
    i2i = json.loads(from_aog("aliyun", "image-to-image").request(
        j({"prompt": "p", "image": "https://x/in.png"})).body)
    assert i2i["input"]["base_image_url"] == "https://x/in.png" and i2i["parameters"]["n"] == 1


def test_aliyun_text_to_speech_round_trip():
    req = {"model": "qwen-tts", "input": {"text": "你好", "voice": "Cherry"}}
    aog, back = request_round_trip("aliyun", "text-to-speech", req)
    assert aog["text"] == "你好" and back == req
    resp = {"request_id": "r", "output": {"audio": {"url": "https://x/a.wav"},
                                          "finish_reason": "stop"}}
    aog, back = response_round_trip("aliyun", "text-to-speech", resp)
    assert aog["url"] == "https://x/a.wav" and back == resp


def test_baidu_and_openvino_images_size_mapping():
    out = json.loads(from_aog("baidu", "text-to-image").request(
        j({"prompt": "p", "size": "1024*768"})).body)
    assert out["size"] == "1024x768"
    resp = {"id": "b", "created": 1, "data": [{"url": "https://x/1.png"}]}
    aog, back = response_round_trip("baidu", "text-to-image", resp)
    assert aog["url"] == ["https://x/1.png"] and back == resp
    ov = json.loads(from_aog("openvino", "text-to-image").request(j({"prompt": "p"})).body)
    assert ov["size"] == "512x512" and ov["num_inference_steps"] == 50 and ov["rng_seed"] == 42


def test_openvino_rerank_round_trip():
    req = {"model": "r", "query": "q", "documents": ["a", "b"], "top_n": 1}
    _, back = request_round_trip("openvino", "rerank", req)
    assert back == req
    resp = {"id": "x", "results": [{"index": 1, "relevance_score": 0.9}],
            "usage": {"total_tokens": 5}}
    aog, back = response_round_trip("openvino", "rerank", resp)
    assert aog["results"][0]["relevance_score"] == 0.9 and back == resp


def test_tencent_cloud_api_shapes():
    out = json.loads(from_aog("tencent", "text-to-speech").request(
        j({"text": "hi", "voice": "101001"}), headers={}).body)
    assert out["Text"] == "hi" and out["VoiceType"] == 101001
    aog = json.loads(from_aog("tencent", "text-to-image").response(
        j({"Response": {"RequestId": "q", "ResultImage": "https://x/i.png"}})).body)
    assert aog == {"id": "q", "url": ["https://x/i.png"]}


def test_openai_role_only_and_usage_only_chunks():
    prov = from_aog("openai", "chat").stream()
    first = {"id": "c", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None}]}
    aog = json.loads(prov.convert(j(first)))
    assert aog["message"] == {"role": "assistant", "content": ""} and aog["finished"] is False
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
             "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3,
                                      "total_tokens": 5}}
    aog = json.loads(prov.convert(j(usage)))
    assert aog["finished"] is True and aog["usage"]["total_tokens"] == 5


PARSED_BODIES = [
    {"model": "m", "messages": [{"role": "user", "content": "hé"}], "stream": True,
     "stream_options": {"include_usage": True}, "max_completion_tokens": 7, "top_k": 3,
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5},
    {"model": "m", "prompt": "p", "input": ["a", "b"], "options": {"num_predict": 3}},
    {"model": 5, "stream": "yes"},
    {},
]


@pytest.mark.parametrize("flavor", CONV.registry.known())
def test_parsed_request_converts_like_its_bytes(flavor):
    """`request_parsed` (a door's parse-once path) gives, for every built-in flavor and
    service both ways through AOG, the bytes `request` gives, and leaves its input as it
    was: the door may skip the parse/serialise steps between its templates."""
    fl = CONV.registry.get(flavor)
    checked = 0
    for service in fl.services:
        for conv in (CONV.between(service, flavor, "aog"), CONV.between(service, "aog", flavor)):
            if not conv.parses_requests:
                continue
            for body in PARSED_BODIES:
                for model, stream in ((None, None), ("chosen", False), (None, True)):
                    try:
                        want = conv.request(j(body), model=model, stream=stream).body
                    except ConvertError:
                        with pytest.raises(ConvertError):
                            conv.request_parsed(body, model=model, stream=stream)
                        continue
                    before = json.dumps(body)
                    value = conv.request_parsed(body, model=model, stream=stream)
                    assert json.dumps(body) == before, (service, body)
                    got = b"" if value is None else encode_body(value)
                    assert got == want, (flavor, service, body, model, stream)
                    checked += 1
    if flavor != "aog":
        assert checked, f"{flavor}: no service converts its requests"
