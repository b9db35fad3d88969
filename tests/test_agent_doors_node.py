"""The Vercel AI SDK (`ai` with `@ai-sdk/openai`'s default provider and
`@ai-sdk/anthropic`) against `/v1/responses` and `/v1/messages`.

Real parts: Node with the SDK packages `make test` installs from tests/node's lock file
(`make node-sdks`, into .cache/node-sdks), a real gateway whose chat provider is the
shipped openai-plugin relaying to the scripted loopback server of
test_agent_doors_tools (it answers text, or calls the first tool, and answers a tool
result with its text), with a client key the SDK sends (Bearer for OpenAI, `x-api-key`
for Anthropic). Skipped only when Node is not installed.

Proven: the SDK, whose stream and answer schemas are strict, reads both doors' answers:
text unary and streamed (read only from `response.output_text.delta` /
`text_delta`), finish reasons and usage (from `response.completed` /
`message_start` + `message_delta`), tool calls unary and streamed with their parsed
input and the `tool-calls` finish reason, and a tool loop in which the SDK runs the
tool and replays the history (`function_call` + `function_call_output`, `tool_use` +
`tool_result`) to get the final text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Gateway
from test_agent_doors_tools import CLIENT_KEY, COMPLETION_TOKENS, MODEL, PROMPT_TOKENS, cloud, gw

__all__ = ["cloud", "gw"]  # the fixtures, shared with the SDK tests of Python

NODE = shutil.which("node")
SDK_DIR = REPO / ".cache" / "node-sdks"
SCRIPT = REPO / "tests" / "node" / "agent_sdks.mjs"


@pytest.fixture(scope="module")
def results(gw: Gateway) -> Iterator[dict[str, Any]]:
    if NODE is None:
        pytest.skip("Node is not installed; the Vercel AI SDK tests need `node`")
    if not (SDK_DIR / "node_modules" / "ai").is_dir():
        pytest.fail(f"the Node SDK packages are not installed in {SDK_DIR}; run "
                    "`make node-sdks` (part of `make test`)")
    # ES modules resolve packages from the script's own folder: run a copy beside them
    script = SDK_DIR / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    proc = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "GATEWAY_URL": gw.url, "MODEL": MODEL,
                               "API_KEY": CLIENT_KEY})
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    yield json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_vercel_ai_sdk_text_and_usage(results: dict[str, Any], provider: str) -> None:
    r = results[provider]
    assert r["text"] == "Hello there." and r["finish"] == "stop"
    assert r["streamed"].strip() == "Hello there." and r["streamFinish"] == "stop"
    for usage in (r["usage"], r["streamUsage"]):
        assert usage["inputTokens"] == PROMPT_TOKENS
        assert usage["outputTokens"] == COMPLETION_TOKENS


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_vercel_ai_sdk_tool_calls_and_loop(results: dict[str, Any], provider: str) -> None:
    r = results[provider]
    want = [{"name": "get_weather", "input": {"city": "Paris"}}]
    assert r["calls"] == want and r["callsFinish"] == "tool-calls"
    assert r["streamCalls"] == want and r["streamCallsFinish"] == "tool-calls"
    assert r["loopText"] == "The tool said: sunny in Paris" and r["loopSteps"] == 2


def test_node_packages_are_pinned() -> None:
    package = json.loads((REPO / "tests" / "node" / "package.json").read_text())
    lock = json.loads((REPO / "tests" / "node" / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert version[0].isdigit(), (name, version)  # exact versions only
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert Path(SCRIPT).is_file()
