"""The `aogstream` command (mirrors AOG's `aog`): `server start`, `engine`, `version`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from aogstream import AOG_VERSION, SPEC_VERSION, __version__
from aogstream.config import Config, default_plugin_dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aogstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="run the gateway")
    ssub = server.add_subparsers(dest="action", required=True)
    start = ssub.add_parser("start", help="start the gateway in the foreground")
    start.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    start.add_argument("--port", type=int, default=None, help="port (default 16688)")
    start.add_argument("--plugin-dir", action="append", type=Path, default=None,
                       help="plugin folder to search (repeatable; default: ./plugins, "
                       "AOG_PLUGIN_DIR, <data dir>/plugins)")
    start.add_argument("--data-dir", type=Path, default=None, help="data directory")
    start.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub.add_parser("version", help="print versions")
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
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"aogstream {__version__} (AOG {AOG_VERSION} compatible, API {SPEC_VERSION})")
        return 0
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "engine":
        from aogstream import engine_cli

        cfg = Config.from_env(data_dir=args.data_dir, plugin_dirs=args.plugin_dir,
                              engine_dir=args.engine_dir)
        if args.data_dir is not None and not args.plugin_dir:
            cfg.plugin_dirs = default_plugin_dirs(cfg.data_dir)
        logging.getLogger().setLevel(logging.WARNING)
        if args.action == "install":
            return trio.run(lambda: engine_cli.run_install(
                cfg, args.plugins, cover=args.cover, models=not args.no_models))
        return trio.run(engine_cli.run_status, cfg)
    cfg = Config.from_env(host=args.host, port=args.port, data_dir=args.data_dir,
                          plugin_dirs=args.plugin_dir)
    if args.data_dir is not None and not args.plugin_dir:
        cfg.plugin_dirs = default_plugin_dirs(cfg.data_dir)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("aogstream").warning(
            "binding to %s: the API has no authentication; anyone who can reach this "
            "address can use it", cfg.host)
    from aogstream.http.server import serve

    try:
        trio.run(serve, cfg)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
