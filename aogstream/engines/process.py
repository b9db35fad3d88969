"""Engine processes: started on a free loopback port, watched, never leaked.

An engine process is a child of the plugin. On Linux it starts through a small
shim that sets PR_SET_PDEATHSIG=SIGKILL and then execs the engine, so even a plugin
killed with -9 takes its engines with it;
a normal stop sends SIGTERM to the engine's process group and SIGKILL after a grace
period. Readiness is an HTTP GET on the engine's health path, failing early (with the
engine's last log lines) when the process exits during start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from aogstream import manifest as m

log = logging.getLogger("aogstream.engines.process")
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Runs first in the new process, then becomes the engine (execvp keeps PDEATHSIG).
# A shim rather than preexec_fn: Python code between fork and exec in a process with
# gRPC's threads can crash or deadlock the child.
_DEATH_SHIM = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(70)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def with_parent_death(argv: list[str]) -> list[str]:
    """`argv` wrapped so the engine is SIGKILLed when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _DEATH_SHIM, str(os.getpid()), *argv]


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class EngineProcess:
    """One engine process serving HTTP on 127.0.0.1:<port>."""

    def __init__(self, label: str, argv: list[str], *, port: int,
                 health_path: str = "/health", env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.label = label
        self.argv = argv
        self.port = port
        self.health_path = health_path
        self.env = env
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=30)
        self.stopping = False
        self.started_at = 0.0
        self._log_task: asyncio.Future[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 120.0) -> None:
        """Spawn and wait until the health path answers 200."""
        self.stopping = False
        self.proc = await asyncio.create_subprocess_exec(
            *with_parent_death(self.argv), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # own group: the gateway's Ctrl-C is the plugin's to handle
        )
        self.started_at = time.monotonic()
        self._log_task = asyncio.ensure_future(self._pump_log())
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc.returncode is not None:
                    raise m.PluginError(
                        m.ERR_CODE_ENGINE_START_FAILED,
                        f"{self.label} exited during start-up (exit {self.proc.returncode})",
                        "\n".join(self.tail))
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(self.base_url + self.health_path)
                    if r.status_code == 200:
                        log.info("%s ready on port %d (pid %d) in %.2f s", self.label,
                                 self.port, self.proc.pid, time.monotonic() - self.started_at)
                        return
                if time.monotonic() > deadline:
                    await self.stop()
                    raise m.PluginError(m.ERR_CODE_ENGINE_START_FAILED,
                                        f"{self.label} did not become ready in {timeout:.0f} s",
                                        "\n".join(self.tail))
                await asyncio.sleep(0.05)

    async def _pump_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.tail.append(line)
                log.debug("[%s] %s", self.label, line)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the engine's process group, SIGKILL after `grace` seconds."""
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        if self._log_task is not None:
            self._log_task.cancel()
        log.info("%s stopped", self.label)
