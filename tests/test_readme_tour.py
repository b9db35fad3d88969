"""The README's first tour snippet, run as written against a real gateway serving the
shipped pocketsphinx-plugin with its real engine.

Proven here: the snippet needs nothing but the repository (it reads the shipped
`examples/goforward.wav`, not a file only `make sysdeps` installs), and it prints each
event with the recognised sentence's text ("go forward ten meters"), ending with
`task-finished`. Only the port is changed (the test gateway's free port).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import wave
from collections.abc import Iterator

import pytest
from conftest import REPO, Gateway, shipped_plugins_gateway


def tour_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    tour = readme[readme.index("## A one-minute tour"):]
    match = re.search(r"\.venv/bin/python - <<'EOF'\n(.*?)\nEOF\n", tour, re.S)
    assert match, "the tour has no python snippet"
    return match.group(1)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("tour"),
                                 ["pocketsphinx-plugin"]) as g:
        yield g


def test_the_shipped_recording_is_small_16k_mono_pcm16():
    path = REPO / "examples" / "goforward.wav"
    assert path.stat().st_size < 80_000
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)


def test_the_readme_tour_snippet_prints_the_sentence(gw: Gateway):
    code = tour_snippet()
    assert "/usr/share" not in code
    code = code.replace("127.0.0.1:16688", f"127.0.0.1:{gw.port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("task-started") and lines[-1].startswith("task-finished"), lines
    said = " ".join(ln.split(" ", 1)[1] for ln in lines if ln.startswith("result-generated ")
                    and " " in ln)
    assert "forward" in said.lower(), proc.stdout
    assert "{" not in proc.stdout  # the text, not the dict


def front_door_snippets() -> str:
    """The README's three OpenAI snippets (chat, a tool call, then audio), joined as one
    script."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## OpenAI and Ollama front doors"):]
    section = section[:section.index("\n## ", 4)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3, blocks
    return "".join(blocks)


def test_the_readme_openai_snippets_print_the_answers(tmp_path_factory):
    with shipped_plugins_gateway(tmp_path_factory.mktemp("tour-openai"),
                                 ["llamacpp-plugin", "whisper-plugin", "piper-plugin"]) as g:
        code = front_door_snippets().replace("localhost:16688", f"127.0.0.1:{g.port}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) >= 3, proc.stdout  # the chat answer, the tool call, the transcript
    arguments = json.loads(lines[-2])  # the forced tool call's arguments, as printed
    assert isinstance(arguments, dict), proc.stdout
    assert "window" in lines[-1].lower(), proc.stdout
