"""Engine installation: a virtualenv of pinned packages in the plugin's data directory.

Why a venv of its own: engines bring heavy, version-sensitive dependencies (numpy,
onnxruntime, a compiled llama.cpp); keeping them out of the gateway's environment
means an engine upgrade can never break the gateway, and deleting the plugin's data
directory removes the engine completely.

Installing is slow (llama-cpp-python compiles llama.cpp for ~10 minutes on 2 cores),
so progress is reported as it happens: every pip phase and a heartbeat every few
seconds go to the plugin log (which the host shows), to an optional callback, and as
JSON lines to `install-progress.jsonl`, which `aogstream engine install` follows to
draw progress while the (unary, AOG-shaped) InstallEngine call runs. A second
install finds the stamp file and returns at once. A file lock keeps two installs of
the same engine (two gateways, a test run beside `make run`) from colliding.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs

from aogstream import manifest as m

log = logging.getLogger("aogstream.engines.install")
ProgressCallback = Callable[[dict[str, Any]], None]
HEARTBEAT_S = 10.0


@attrs.define
class EngineSpec:
    """What an engine is made of, pinned."""

    name: str  # shown to people: "llama.cpp (llama-cpp-python)"
    packages: list[str]  # pip requirements, installed with their dependencies
    check_import: str  # a module whose import proves the engine works
    note: str = ""  # said before installing, e.g. how long a compile takes
    version_of: str = ""  # the distribution whose version GetVersion reports

    def fingerprint(self) -> dict[str, Any]:
        return {"packages": self.packages}


class EngineEnv:
    """The engine's virtualenv under `<plugin data>/engine`."""

    def __init__(self, data_dir: Path, spec: EngineSpec, python: str | None = None) -> None:
        self.spec = spec
        self.root = data_dir / "engine"
        self.venv = self.root / "venv"
        self.stamp = self.root / "installed.json"
        self.progress_file = self.root / "install-progress.jsonl"
        # The venv is built from the plugin's own interpreter unless told otherwise,
        # so compiled wheels match the Python the plugin was tested with.
        self.base_python = python or os.environ.get("AOGSTREAM_ENGINE_PYTHON") or sys.executable

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def installed(self) -> bool:
        """True when a finished install of exactly these packages is present."""
        return self.info().get("packages") == self.spec.packages and self.python.exists()

    def info(self) -> dict[str, Any]:
        """The install stamp; empty when missing or unreadable (a stamp that is not a
        JSON object counts as unreadable: it is not ours)."""
        try:
            stamp = json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return {}
        return stamp if isinstance(stamp, dict) else {}

    def site_packages(self) -> Path:
        found = sorted((self.venv / "lib").glob("python3*/site-packages"))
        if not found:
            raise FileNotFoundError(f"no site-packages in {self.venv}")
        return found[0]

    def remove(self) -> None:
        shutil.rmtree(self.venv, ignore_errors=True)
        self.stamp.unlink(missing_ok=True)

    async def install(self, cover: bool = False,
                      progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Install (or with `cover`, reinstall) the engine; returns the stamp.

        Raises PluginError(ENGINE_INSTALL_FAILED) naming the failing step and the
        tail of pip's output.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock = await asyncio.to_thread(_lock, self.root / ".install.lock")
        try:
            if self.installed() and not cover:
                info = self.info()
                self._report(progress, {"status": "already installed",
                                        "engine": self.spec.name, "done": True})
                return info
            return await self._install(progress)
        finally:
            lock.close()

    async def _install(self, progress: ProgressCallback | None) -> dict[str, Any]:
        started = time.monotonic()
        self.progress_file.write_text("")
        self.remove()
        state = {"phase": "creating the virtualenv", "started": started}

        def report(status: str, **extra: Any) -> None:
            state["phase"] = status
            self._report(progress, {"status": status, "engine": self.spec.name,
                                    "elapsed": round(time.monotonic() - started, 1), **extra})

        if self.spec.note:
            report(f"installing {self.spec.name}: {self.spec.note}")
        report("creating the virtualenv")
        await self._run([self.base_python, "-m", "venv", str(self.venv)], "venv", report)
        report(f"installing {' '.join(self.spec.packages)}")
        await self._run(
            [str(self.python), "-m", "pip", "install", "--disable-pip-version-check",
             "--progress-bar", "off", *self.spec.packages],
            "pip install", report, parse_pip=True,
        )
        report(f"checking that {self.spec.check_import} imports")
        await self._run([str(self.python), "-c", f"import {self.spec.check_import}"],
                        "import check", report)
        stamp = {
            "engine": self.spec.name,
            "packages": self.spec.packages,
            "python": self.base_python,
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - started, 1),
        }
        self.stamp.write_text(json.dumps(stamp, indent=1))
        report(f"installed in {stamp['seconds']} s", done=True)
        return stamp

    async def _run(self, argv: list[str], step: str, report: Callable[..., None],
                   parse_pip: bool = False) -> None:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # never let the gateway's packages leak in
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        tail: deque[str] = deque(maxlen=25)
        last_status = [step]
        since = [time.monotonic()]  # when the current status began

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                report("still working: " + progress_text(
                    last_status[0], time.monotonic() - since[0]), heartbeat=True)

        beat = asyncio.ensure_future(heartbeat())
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                tail.append(line)
                if parse_pip and (status := _pip_status(line)) and status != last_status[0]:
                    last_status[0], since[0] = status, time.monotonic()
                    report(status)
            code = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            beat.cancel()
        if code != 0:
            detail = "\n".join(tail)
            raise m.PluginError(
                m.ERR_CODE_ENGINE_INSTALL_FAILED,
                f"installing {self.spec.name} failed at '{step}' (exit {code}); "
                f"see the plugin log for pip's output",
                detail,
            )

    def _report(self, progress: ProgressCallback | None, event: dict[str, Any]) -> None:
        log.info("%s: %s", self.spec.name, event["status"])
        with contextlib.suppress(OSError), self.progress_file.open("a") as f:
            f.write(json.dumps(event) + "\n")
        if progress is not None:
            progress(event)


def _lock(path: Path) -> IO[str]:
    """An exclusive lock on `path`, held until the returned file is closed."""
    f = path.open("a")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


_PIP_PREFIXES = ("Collecting ", "Downloading ", "Building wheel", "Building wheels",
                 "Installing collected", "Successfully installed", "Created wheel",
                 "Installing build dependencies", "Preparing metadata", "Using cached ")


LLAMA_BUILD = "Building wheel for llama"
LLAMA_BUILD_S_2_CORES = 600.0  # measured: about 10 minutes on 2 cores


def expected_seconds(status: str, cores: int | None = None) -> float | None:
    """How long a step usually takes here, when known (the llama.cpp compile scales with
    the cores cmake may use)."""
    if status.startswith(LLAMA_BUILD):
        n = max(1, cores or os.cpu_count() or 2)
        return max(120.0, LLAMA_BUILD_S_2_CORES * 2 / n)
    return None


def progress_text(status: str, elapsed: float, cores: int | None = None) -> str:
    """A heartbeat line that gives a sense of progress: elapsed against the usual
    duration ("3 min of about 10") when the step's duration is known."""
    expected = expected_seconds(status, cores)
    if expected is None:
        return f"{status} ({elapsed:.0f} s in this step)"
    done, usual = round(elapsed / 60), round(expected / 60)
    if elapsed <= expected:
        return f"{status}: {done} min of about {usual}"
    return f"{status}: {done} min, longer than the usual {usual}; still going"


def _pip_status(line: str) -> str:
    """The pip output lines worth showing as progress (one per phase or package); pip's
    own "still running..." repeats are not news (the heartbeat says how long)."""
    text = line.strip()
    if text.startswith(_PIP_PREFIXES):
        for suffix in (": started", ": still running..."):
            text = text.removesuffix(suffix)  # the same step, so the same status
        if text.startswith(LLAMA_BUILD) and ": finished" not in text:
            text += " (compiling llama.cpp)"
        return text[:200]
    return ""
