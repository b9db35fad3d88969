"""Starting the processes a benchmark measures, and the client's own limits.

- `free_port()`: a loopback port nothing listens on (bound, then released).
- `popen(argv, log)`: a child in its own session (so its whole group can be stopped)
  that gets SIGTERM if the benchmark itself dies (PR_SET_PDEATHSIG), stdout and stderr
  in `log`.
- `raise_fd_limit(want)`: room for the client's sockets (children inherit it).
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from .layout import HOST, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


try:  # looked up here, not in the child: no dlopen between fork and exec
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def popen(argv: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen:
    """Start a process in its own session (so its whole group can be stopped)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            # Bench starts systems from threads; the hook only calls a C function
            # looked up in advance, and those threads live until the systems stop.
            preexec_fn=_die_with_parent,
        )


def raise_fd_limit(want: int) -> int:
    """Raise this process's open-file soft limit toward `want` (children inherit it);
    returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
