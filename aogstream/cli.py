"""The `aogstream` command (mirrors AOG's `aog`): the server, local engines, and the
client commands (services, providers, models, plugins, chat, transcription) that talk
to a running gateway at `AOG_HOST`."""

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

from aogstream.config import Config, default_plugin_dirs, ensure_private_dir

# the plugins that come with aogstream (beside the package in a checkout)
SHIPPED_PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
PID_FILE = "aogstream.pid"
LOG_FILE = Path("logs") / "server.log"
DAEMON_START_TIMEOUT = 180.0  # plugins come up (and engines start) before /health answers
STOP_TIMEOUT = 60.0


def build_parser() -> argparse.ArgumentParser:
    from aogstream import AOG_VERSION, __version__, cli_client

    parser = argparse.ArgumentParser(prog="aogstream", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"aogstream {__version__} (AOG API {AOG_VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="command")
    server = sub.add_parser("server", help="start or stop the gateway")
    ssub = server.add_subparsers(dest="action", required=True)
    start = ssub.add_parser("start", help="start the gateway (in the foreground unless -d)")
    start.add_argument("-d", "--daemon", action="store_true",
                       help="run in the background (logs in <data dir>/logs/server.log, PID in "
                       "<data dir>/aogstream.pid); returns once it answers")
    start.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    start.add_argument("--port", type=int, default=None, help="port (default 16688)")
    start.add_argument("--plugin-dir", action="append", type=Path, default=None,
                       help="plugin folder to search (repeatable; default: ./plugins, "
                       "AOG_PLUGIN_DIR, <data dir>/plugins)")
    start.add_argument("--data-dir", type=Path, default=None, help="data directory")
    start.add_argument("--workers", type=int, default=None,
                       help="serving processes sharing the port and one set of plugins "
                       "(default: one per core; AOGSTREAM_WORKERS)")
    start.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                       help="a name clients reach the gateway by, accepted in the Host header "
                       "besides loopback and the bound address (repeatable; also "
                       "AOGSTREAM_ALLOWED_HOSTS, comma-separated)")
    start.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                       help="a web origin (scheme://host:port) allowed to call the service "
                       "routes with CORS, never management (repeatable; also "
                       "AOGSTREAM_CORS_ORIGINS)")
    start.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stop = ssub.add_parser("stop", help="stop the gateway started with `server start -d`")
    stop.add_argument("--data-dir", type=Path, default=None, help="data directory")
    version = sub.add_parser("version", help="client and server versions")
    version.set_defaults(func=cli_client.cmd_version)
    engine = sub.add_parser("engine", help="install and inspect local plugins' engines")
    esub = engine.add_subparsers(dest="action", required=True)
    inst = esub.add_parser("install", help="install engines and pull default models, "
                           "with progress (a second run returns at once)")
    inst.add_argument("plugins", nargs="*", help="local plugin names (default: all)")
    inst.add_argument("--cover", action="store_true", help="reinstall even if present")
    inst.add_argument("--no-models", action="store_true", help="skip default models")
    status = esub.add_parser("status", help="which engines and models are installed")
    for p in (inst, status):
        p.add_argument("--plugin-dir", action="append", type=Path, default=None)
        p.add_argument("--data-dir", type=Path, default=None, help="data directory")
        p.add_argument("--engine-dir", type=Path, default=None,
                       help="where engines and models go (default <data dir>/engines)")
    cli_client.add_parsers(sub)
    return parser


EPILOG = """examples:
  aogstream server start -d            start the gateway in the background
  aogstream get services               what each service is served by, or why not
  aogstream chat "What is the capital of France?"
  aogstream transcribe examples/goforward.wav
  aogstream install chat --remote --flavor openai-plugin --name my_cloud_chat \\
      --auth-key '{"api_key": "sk-..."}'
  aogstream engine status              which local engines and models are installed
  aogstream <command> -h               the options of one command

environment:
  AOG_HOST                 the gateway the client commands talk to
                           (default http://127.0.0.1:16688; host:port works too)
  AOG_DATA_DIR             data directory (database, logs, engines, plugins)
  AOG_PLUGIN_DIR           more plugin folders (separated by ':')
  AOGSTREAM_HOST, AOGSTREAM_PORT     where `server start` listens
  AOGSTREAM_ENGINE_DIR     where local engines and models are installed
  AOGSTREAM_WORKERS        serving processes (0 = one per core)
  AOGSTREAM_UNARY_TIMEOUT, AOGSTREAM_STREAM_TIMEOUT   seconds (negative: none)
  AOGSTREAM_MAX_BODY_BYTES request body limit
  AOGSTREAM_LOCAL_AUDIO_PATHS=0      refuse local file paths in speech-to-text `audio`
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `aogstream`: the help, not a usage error
        parser.print_help()
        return 0
    if args.command not in ("server", "engine"):
        from aogstream import cli_client

        return cli_client.run(args)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "engine":
        return _engine(args)
    if args.action == "stop":
        return server_stop(Config.from_env(data_dir=args.data_dir).data_dir)
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 (one per core) or more")
    cfg = Config.from_env(host=args.host, port=args.port, data_dir=args.data_dir,
                          plugin_dirs=args.plugin_dir, workers=args.workers)
    if args.data_dir is not None and not args.plugin_dir:
        cfg.plugin_dirs = default_plugin_dirs(cfg.data_dir)
    cfg.allowed_hosts = [*cfg.allowed_hosts, *(args.allowed_host or [])]
    cfg.cors_origins = [*cfg.cors_origins, *(args.cors_origin or [])]
    from aogstream.http.guard import GuardConfigError, load_keys

    try:  # say why at once, before any plugin starts (or a daemon is spawned)
        load_keys(cfg, generate=False)
    except GuardConfigError as exc:
        print(f"aogstream: {exc}", file=sys.stderr)
        return 2
    if args.daemon:
        return server_start_daemon(cfg, args)
    return _serve_foreground(cfg)


def _engine(args: argparse.Namespace) -> int:
    import trio

    from aogstream import engine_cli

    cfg = Config.from_env(data_dir=args.data_dir, plugin_dirs=args.plugin_dir,
                          engine_dir=args.engine_dir)
    if args.data_dir is not None and not args.plugin_dir:
        cfg.plugin_dirs = default_plugin_dirs(cfg.data_dir)
    shipped = SHIPPED_PLUGINS.resolve()
    if not args.plugin_dir and shipped.is_dir() and shipped not in cfg.plugin_dirs:
        # run outside the repository folder: the engines are the shipped plugins' still
        cfg.plugin_dirs.append(shipped)
    logging.getLogger().setLevel(logging.WARNING)
    if args.action == "install":
        return trio.run(lambda: engine_cli.run_install(
            cfg, args.plugins, cover=args.cover, models=not args.no_models))
    return trio.run(engine_cli.run_status, cfg)


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


def _serve_foreground(cfg: Config) -> int:
    """Serve until a signal, with the PID file in the data directory so that
    `server stop` works for a foreground server too; the file goes when it exits."""
    import trio

    from aogstream.http.guard import GuardConfigError
    from aogstream.http.server import serve
    from aogstream.store.sqlite import StoreError

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
    import httpx

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


if __name__ == "__main__":
    sys.exit(main())
