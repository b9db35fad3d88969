"""An engine's error reaches the client as the engine's own words, never with a server
file path in it.

A unit test of `aogstream.engines.base.engine_error`, the one place every engine plugin
(llama.cpp, whisper, piper, pocketsphinx, embed) turns an engine's failed answer into the
plugin error the gateway answers with: fed the bodies real engines send (llama.cpp's
`{"error": {"message"}}`, FastAPI's 422 `{"detail": [...]}`, a plain-text traceback),
each naming a model file, the data directory or a source file, it keeps the message and
the file's name but drops the folders; a 4xx stays the caller's mistake (INVALID_ARGUMENT).
And the host's side, `aogstream.errors.from_plugin_code`, where every plugin's error
becomes the gateway's answer: an unexpected failure the SDK reports as
`OSError: ... '<path>'` names the file, not its folders.
"""

from __future__ import annotations

import json

import pytest

from aogstream import manifest as m
from aogstream.engines.base import engine_error
from aogstream.errors import from_plugin_code

DATA = "/srv/aog/data/engines/llamacpp-plugin"
CASES = [
    (500, {"error": {"message": f"failed to load model '{DATA}/models/smol/smol.gguf'"}},
     ["failed to load model", "smol.gguf"]),
    (400, {"error": f"cannot open {DATA}/cache/prompt.bin: no space left"},
     ["cannot open prompt.bin", "no space left"]),
    (422, {"detail": [{"loc": ["body", "temperature"], "msg":
                       f"bad value (File \"{DATA}/venv/lib/python3.13/app.py\", line 3)"}]},
     ["temperature: bad value", 'File "app.py", line 3']),
    (500, f'Traceback:\n  File "{DATA}/venv/lib/server.py", line 9\nOSError', ["server.py"]),
]


@pytest.mark.parametrize("status, body, words", CASES)
def test_an_engine_error_keeps_its_words_but_names_no_server_folder(status, body, words):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    err = engine_error(status, raw, "llama.cpp")
    assert "/srv" not in err.message and DATA not in err.message, err.message
    assert err.message.startswith("llama.cpp: "), err.message
    for word in words:
        assert word in err.message, err.message
    want = m.ERR_CODE_INVALID_ARGUMENT if status < 500 else m.ERR_CODE_INTERNAL
    assert err.code == want


def test_an_engine_error_leaves_urls_and_expressions_alone():
    err = engine_error(400, b'{"error": "POST http://127.0.0.1:8080/v1/chat failed; a/b"}')
    assert err.message == "POST http://127.0.0.1:8080/v1/chat failed; a/b"


def test_a_plugins_unexpected_failure_reaches_the_answer_without_its_folders():
    message = f"OSError: [Errno 2] No such file or directory: '{DATA}/models/smol/smol.gguf'"
    err = from_plugin_code(m.ERR_CODE_INTERNAL, message, "llamacpp-plugin")
    assert err.status == 500
    assert "/srv" not in err.message and "smol.gguf" in err.message, err.message
    assert err.message.startswith("llamacpp-plugin: OSError: [Errno 2]"), err.message


def test_a_plugin_error_naming_a_gateway_route_keeps_the_route_whole():
    """What an error tells the user to call is a route, not a server folder."""
    for route in ("PUT /aog/v0.2/service_provider", "POST /v1/chat/completions",
                  "GET /api/tags", "PATCH /v0/management/plugins/x/enabled"):
        err = from_plugin_code(14, f"set api_key with {route}, or see /srv/data/keys.yaml",
                               "p")
        assert route in err.message and "/srv/data/" not in err.message
        assert "keys.yaml" in err.message


def test_a_plugin_error_naming_a_clouds_endpoint_keeps_it_whole():
    err = from_plugin_code(2, "the cloud answered 404 for /chat/completions; model file "
                              "/home/u/.local/share/aogstream/m.gguf", "openai-plugin")
    assert "/chat/completions" in err.message
    assert "/home/" not in err.message and "m.gguf" in err.message
