"""`aogstream server start|stop` and `aogstream version`: the gateway process itself.

`server start` serves in the foreground, or re-runs itself detached (`-d`) and returns once
`/health` answers; either way the PID file in the data directory lets `server stop` find it.
A taken port is named (with the process holding it) before any plugin starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from aogstream import SPEC_VERSION
from aogstream.cli.client import Api, CliError
from aogstream.config import Config, ensure_private_dir

PID_FILE = "aogstream.pid"
LOG_FILE = Path("logs") / "server.log"
DAEMON_START_TIMEOUT = 180.0  # plugins come up (and engines start) before /health answers
STOP_TIMEOUT = 60.0


def cmd_version(api: Api, _args: argparse.Namespace) -> int:
    """The client's version always, the server's when one answers (a mismatch shows)."""
    from aogstream import AOG_VERSION, __version__

    print(f"aogstream {__version__} (AOG {AOG_VERSION} compatible, API {SPEC_VERSION})")
    try:
        info = api.call("GET", "/version", timeout=httpx.Timeout(3.0))
    except CliError:
        print(f"server: not running at {api.url}")
        return 0
    info = info if isinstance(info, dict) else {}
    print(f"server: aogstream {info.get('aogstream', '?')} (AOG {info.get('version', '?')}, "
          f"API {info.get('spec_version', '?')}) at {api.url}")
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def port_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound, naming the process that holds it when it can be
    found; None when it is free. Checked before any plugin starts, so a taken port is
    one clear line instead of six plugins started and a traceback."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"cannot listen on {host}: no such address on this machine"
            if exc.errno in (errno.EACCES, errno.EPERM):
                return f"may not listen on port {port} (ports below 1024 need privileges)"
            if exc.errno != errno.EADDRINUSE:
                return f"cannot listen on {host}:{port}: {exc.strerror}"
    return f"port {port} is already in use{_holder(port)}; stop that process or choose " \
        "another port with --port (or AOGSTREAM_PORT)"


def _holder(port: int) -> str:
    """" by pid N (command line)" for the process listening on `port`, if visible."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN \
                    and conn.pid:
                try:
                    cmd = " ".join(psutil.Process(conn.pid).cmdline())[:120]
                except psutil.Error:
                    cmd = ""
                return f" by pid {conn.pid}" + (f" ({cmd})" if cmd else "")
    except Exception:  # noqa: BLE001 - naming the holder is a courtesy
        pass
    return ""


def serve_foreground(cfg: Config) -> int:
    """Serve until a signal, with the PID file in the data directory so that
    `server stop` works for a foreground server too; the file goes when it exits."""
    import trio

    from aogstream.http.guard import GuardConfigError
    from aogstream.serving.primary import serve
    from aogstream.store import StoreError

    problem = port_problem(cfg.host, cfg.port)
    if problem:
        print(f"aogstream cannot start: {problem}", file=sys.stderr)
        return 1
    pid_file = cfg.data_dir / PID_FILE
    other = read_pid(pid_file)
    if other is None or other == os.getpid() or not pid_alive(other):
        # never take over the file of another live server on this data directory
        with contextlib.suppress(OSError):
            ensure_private_dir(cfg.data_dir)
            pid_file.write_text(f"{os.getpid()}\n")
    refused = False
    try:
        try:
            trio.run(serve, cfg)
        except* StoreError as group:  # e.g. encrypted keys and no AOGSTREAM_SECRET_KEY
            for exc in _leaves(group):
                sys.stderr.write(f"aogstream: cannot start: {exc}\n")
            refused = True
    except KeyboardInterrupt:
        pass
    except GuardConfigError as exc:
        print(f"aogstream: {exc}", file=sys.stderr)
        return 2
    finally:
        if read_pid(pid_file) == os.getpid():
            with contextlib.suppress(OSError):
                pid_file.unlink()
    return 2 if refused else 0


# ---- daemon -----------------------------------------------------------------------------


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, which an init that never reaps
    leaves behind, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): kill(0) is all we know
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _health_url(cfg: Config) -> str:
    host = cfg.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.port}/health"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def server_start_daemon(cfg: Config, args: argparse.Namespace) -> int:
    """Re-run `server start` detached (own session, output to the log file), write the
    PID file, and return once `/health` answers, or show the log's tail if it died."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no request lines on the terminal
    pid_file = cfg.data_dir / PID_FILE
    log_path = cfg.data_dir / LOG_FILE
    health = _health_url(cfg)
    old = read_pid(pid_file)
    if old is not None and pid_alive(old):
        print(f"aogstream is already running (pid {old}, PID file {pid_file})")
        return 0
    if _answers(health):
        print(f"something already answers at {health.removesuffix('/health')}; "
              f"choose another --port or stop it first", file=sys.stderr)
        return 1
    ensure_private_dir(cfg.data_dir)
    problem = port_problem(cfg.host, cfg.port)
    if problem:
        print(f"aogstream cannot start: {problem}", file=sys.stderr)
        return 1
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "aogstream", "server", "start",
           "--host", cfg.host, "--port", str(cfg.port), "--data-dir", str(cfg.data_dir)]
    for d in cfg.plugin_dirs:
        cmd += ["--plugin-dir", str(d)]
    if args.verbose:
        cmd.append("-v")
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    for name in args.allowed_host or []:
        cmd += ["--allowed-host", name]
    for origin in args.cors_origin or []:
        cmd += ["--cors-origin", origin]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cfg.database_url:  # in the environment, never on a command line others can read
        env["AOGSTREAM_DATABASE_URL"] = cfg.database_url
    popen_kw: dict[str, object] = {}
    if sys.platform == "win32":
        popen_kw["creationflags"] = (subprocess.DETACHED_PROCESS  # type: ignore[attr-defined]
                                     | subprocess.CREATE_NEW_PROCESS_GROUP)
    else:
        popen_kw["start_new_session"] = True
    with open(log_path, "ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, **popen_kw)  # type: ignore[call-overload]
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()
            print(f"aogstream exited with code {proc.returncode} while starting; "
                  f"{log_path}:\n{_log_tail(log_path, offset)}", file=sys.stderr)
            return 1
        if _answers(health):
            print(f"aogstream is running at {health.removesuffix('/health')} (pid {proc.pid}); "
                  f"logs: {log_path}")
            return 0
        time.sleep(0.2)
    print(f"aogstream (pid {proc.pid}) did not answer {health} within "
          f"{DAEMON_START_TIMEOUT:.0f} s; it keeps starting in the background, see {log_path} "
          f"(stop it with `aogstream server stop`)", file=sys.stderr)
    return 1


def _log_tail(path: Path, offset: int, lines: int = 20) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def server_stop(data_dir: Path) -> int:
    """SIGTERM the gateway named by the PID file and wait until it has exited (it stops
    its plugins first)."""
    pid_file = data_dir / PID_FILE
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid):
        if pid is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()
        print(f"aogstream is not running (no live process in {pid_file})")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + STOP_TIMEOUT
    while pid_alive(pid):
        if time.monotonic() > deadline:
            print(f"aogstream (pid {pid}) is still running {STOP_TIMEOUT:.0f} s after SIGTERM; "
                  f"see {data_dir / LOG_FILE}, or end it with `kill -9 {pid}`", file=sys.stderr)
            return 1
        time.sleep(0.1)
    if read_pid(pid_file) == pid:
        with contextlib.suppress(OSError):
            pid_file.unlink()
    print(f"aogstream stopped (pid {pid})")
    return 0
