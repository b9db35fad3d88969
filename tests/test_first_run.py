"""A first run without surprises: the `aogstream` command as a real subprocess, against
real gateway subprocesses (echo plugin; pocketsphinx-plugin with its real engine for
the realtime transcription), and the gateway's own log.

Proven here: bare `aogstream` prints the help with examples and the environment
variables (exit 0) and `--version` answers; `get models -p nope` says the provider does
not exist; `server start` on a port that is in use says so and names the process that
holds it, before starting any plugin and without a traceback; the gateway prints a
"ready, try ..." line once it serves, its log lines carry one level (a plugin's
"WARNING ..." line is logged at WARNING, not as "INFO ...: WARNING ...") and no
`hypercorn.error` logger; `transcribe --mic-file` reads a WAV's header and resamples a
22.05 kHz recording (pocketsphinx hears it), and refuses a WAV it cannot read;
`engine status` works outside the repository folder; the llama.cpp compile heartbeat
says elapsed against the usual duration, and pip's "still running" lines are no news.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from audio import goforward_pcm
from conftest import PLUGIN_DIR, REPO, Gateway, engine_test_dir, shipped_plugins_gateway

from aogstream.engines.install import _pip_status, progress_text
from aogstream.engines.pcm import resample
from aogstream.host.process import plugin_log_line


def cli(*args: str, url: str | None = None, cwd: Path = REPO, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    full["PYTHONUNBUFFERED"] = "1"
    full["PYTHONPATH"] = str(REPO)  # run from another folder, as an installed command would
    if url:
        full["AOG_HOST"] = url
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "aogstream", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def gw(gateway_factory) -> Gateway:
    return gateway_factory("first-run")


def test_bare_command_shows_help_with_examples_and_environment():
    proc = cli()
    assert proc.returncode == 0, proc.stderr
    for words in ("examples:", "aogstream server start", "environment:", "AOG_HOST",
                  "AOGSTREAM_PORT"):
        assert words in proc.stdout, proc.stdout
    version = cli("--version")
    assert version.returncode == 0 and re.match(r"aogstream \d", version.stdout), version


def test_get_models_of_an_unknown_provider_says_it_does_not_exist(gw: Gateway):
    proc = cli("get", "models", "-p", "nope", url=gw.url)
    assert proc.returncode == 1
    assert "provider 'nope' does not exist" in proc.stderr
    assert "local_echo-plugin_chat" in proc.stderr  # and which ones do


def test_server_start_on_a_taken_port_names_the_holder_and_starts_nothing(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        proc = cli("server", "start", "--port", str(port), "--plugin-dir", str(PLUGIN_DIR),
                   env={"AOG_DATA_DIR": str(tmp_path / "data"),
                        "ECHO_PLUGIN_EVENTS": str(events)}, timeout=60)
    assert proc.returncode == 1, proc
    assert f"port {port} is already in use by pid {os.getpid()}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not events.exists(), "a plugin was started"
    assert time.monotonic() - started < 30


def test_gateway_log_is_ready_line_and_one_level_per_line(gw: Gateway):
    log = gw.log_file.read_text(errors="replace")
    assert re.search(r"ready, try: curl -s http://127\.0\.0\.1:\d+/aog/v0\.2/plugin/list", log)
    assert "hypercorn.error" not in log
    doubled = re.findall(r"(?:DEBUG|INFO|WARNING|ERROR) \S+: (?:DEBUG|INFO|WARNING|ERROR) ",
                         log)
    assert not doubled, doubled[:3]
    # how a plugin's line is re-levelled
    assert plugin_log_line("WARNING echo: low disk", 20) == (30, "echo: low disk")
    assert plugin_log_line("plain output", 20) == (20, "plain output")


def test_engine_status_works_outside_the_repository(tmp_path: Path):
    proc = cli("engine", "status", "--engine-dir", str(engine_test_dir()), cwd=tmp_path,
               env={"AOG_DATA_DIR": str(tmp_path / "data")}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "piper-plugin: engine installed" in proc.stdout, (proc.stdout, proc.stderr)


def test_compile_heartbeat_gives_a_sense_of_progress():
    started = _pip_status("  Building wheel for llama-cpp-python (pyproject.toml): started")
    again = _pip_status("  Building wheel for llama-cpp-python (pyproject.toml): still running...")
    assert started == again  # pip's repeats do not restart the step
    assert progress_text(started, 185, cores=2).endswith("3 min of about 10")
    assert "longer than the usual 10" in progress_text(started, 800, cores=2)
    assert progress_text("Collecting numpy", 12) == "Collecting numpy (12 s in this step)"


# ---- --mic-file with a WAV, against the real realtime engine ---------------------------


@pytest.fixture(scope="module")
def asr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("first-run-asr"),
                                 ["pocketsphinx-plugin"]) as g:
        yield g


def test_mic_file_wav_is_read_and_resampled(asr: Gateway, tmp_path: Path):
    wav = tmp_path / "goforward-22k.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(resample(goforward_pcm(), 16000, 22050))
    proc = cli("transcribe", "--mic-file", str(wav), "--pace", "0", url=asr.url, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "forward" in proc.stdout.lower(), proc.stdout

    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(b"\x80" * 1600)
    bad = cli("transcribe", "--mic-file", str(eight_bit), url=asr.url)
    assert bad.returncode == 2 and "16-bit" in bad.stderr, bad


def test_readme_remote_install_line_works_as_written(tmp_path_factory: pytest.TempPathFactory):
    """`install chat --remote --name my_cloud_chat --auth-key ...` (README's CLI section)
    with one remote plugin offering chat (the stand-in cloud, which accepts any api_key)."""
    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in readme.splitlines()
                if ln.startswith("aogstream install chat --remote --name my_cloud_chat"))
    args = shlex.split(line.split("#")[0])[1:]
    g = Gateway(tmp_path_factory.mktemp("first-run-remote"),
                plugin_dir=[PLUGIN_DIR, REPO / "tests" / "plugins-hybrid"]).start()
    try:
        proc = cli(*args, url=g.url)
        assert proc.returncode == 0, proc.stderr
        assert "my_cloud_chat" in proc.stdout
        listed = cli("get", "service_providers", "-p", "my_cloud_chat", url=g.url)
        assert "remote-echo-plugin" in listed.stdout and "serving" in listed.stdout, listed
    finally:
        g.stop()
