"""The `aogstream` command's entry point: its argument parser, and the dispatch of a
parsed command to the module that carries it out.

`server` and `engine` start things in this process (the engine commands' heavy imports,
the gateway and the plugin host, are made only when they run); every other command is a
client of a running gateway, given an `Api` for it, whose failures end as one line on
stderr and an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aogstream.cli.chat import cmd_chat
from aogstream.cli.client import EXIT_INTERRUPTED, Api, CliError, server_url
from aogstream.cli.import_export import cmd_export, cmd_import
from aogstream.cli.plugins import cmd_plugin
from aogstream.cli.server import (
    cmd_version,
    serve_foreground,
    server_start_daemon,
    server_stop,
)
from aogstream.cli.services import (
    AUTH_TYPES,
    HYBRID_POLICIES,
    cmd_delete,
    cmd_edit,
    cmd_get,
    cmd_install,
    cmd_pull,
)
from aogstream.cli.transcribe import RATE, cmd_transcribe
from aogstream.config import Config, default_plugin_dirs

DESCRIPTION = """The `aogstream` command (mirrors AOG's `aog`): the server, local engines, and the
client commands (services, providers, models, plugins, chat, transcription) that talk
to a running gateway at `AOG_HOST`."""


def build_parser() -> argparse.ArgumentParser:
    from aogstream import AOG_VERSION, __version__

    parser = argparse.ArgumentParser(prog="aogstream", description=DESCRIPTION, epilog=EPILOG,
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
                       "(default 0: one per two cores, at least one; AOGSTREAM_WORKERS)")
    start.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                       help="a name clients reach the gateway by, accepted in the Host header "
                       "besides loopback and the bound address (repeatable; also "
                       "AOGSTREAM_ALLOWED_HOSTS, comma-separated)")
    start.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                       help="a web origin (scheme://host:port) allowed to call the service "
                       "routes with CORS, never management (repeatable; also "
                       "AOGSTREAM_CORS_ORIGINS)")
    start.add_argument("--database-url", default=None, metavar="URL",
                       help="keep the store in PostgreSQL (postgresql://user:pass@host/db), "
                       "shared by several gateway hosts; needs AOGSTREAM_SECRET_KEY "
                       "(default: SQLite in the data directory; AOGSTREAM_DATABASE_URL)")
    start.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stop = ssub.add_parser("stop", help="stop the gateway started with `server start -d`")
    stop.add_argument("--data-dir", type=Path, default=None, help="data directory")
    version = sub.add_parser("version", help="client and server versions")
    version.set_defaults(func=cmd_version)
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
    add_client_parsers(sub)
    from aogstream.cli.database import add_parser as add_db_parser

    add_db_parser(sub)
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
  AOGSTREAM_DATABASE_URL   a PostgreSQL store shared by several gateway hosts
                           (with AOGSTREAM_SECRET_KEY); `aogstream db migrate|copy-sqlite`
  AOGSTREAM_ENGINE_DIR     where local engines and models are installed
  AOGSTREAM_WORKERS        serving processes (0 = one per two cores)
  AOGSTREAM_UNARY_TIMEOUT, AOGSTREAM_STREAM_TIMEOUT   seconds (negative: none)
  AOGSTREAM_MAX_BODY_BYTES request body limit
  AOGSTREAM_LOCAL_AUDIO_PATHS=0      refuse local file paths in speech-to-text `audio`
"""


def add_client_parsers(sub: Any) -> None:
    """Add the client commands to the `aogstream` parser's subcommands."""
    get = sub.add_parser("get", help="list services, models or service providers")
    gsub = get.add_subparsers(dest="what", required=True)
    gs = gsub.add_parser("services", help="services with their hybrid policy and status")
    gs.add_argument("name", nargs="?", help="only this service")
    gm = gsub.add_parser("models", help="models each provider has")
    gm.add_argument("-p", "--provider", help="only this provider's models")
    gm.add_argument("-s", "--service", help="only this service's models")
    gp = gsub.add_parser("service_providers", aliases=["providers"],
                         help="providers (credentials are never shown)")
    gp.add_argument("-s", "--service", help="only providers of this service")
    gp.add_argument("-p", "--provider", help="only this provider")
    gp.add_argument("-r", "--remote", choices=["local", "remote"], help="only local or remote")
    for p in (gs, gm, gp):
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        p.set_defaults(func=cmd_get)
    gp.set_defaults(what="service_providers")

    edit = sub.add_parser("edit", help="change a service's hybrid policy or a provider")
    esub = edit.add_subparsers(dest="what", required=True)
    es = esub.add_parser("service", help="set the hybrid policy")
    es.add_argument("name", help="service name, e.g. chat")
    es.add_argument("--hybrid-policy", "--hybrid_policy", dest="hybrid_policy", required=True,
                    choices=HYBRID_POLICIES)
    ep = esub.add_parser("provider", aliases=["service_provider"],
                         help="update a provider from a JSON file (only its fields change)")
    ep.add_argument("name", help="provider name")
    ep.add_argument("-f", "--file", required=True, help="JSON file with the fields to change")
    es.set_defaults(func=cmd_edit)
    ep.set_defaults(func=cmd_edit, what="provider")

    delete = sub.add_parser("delete", help="delete a model or a service provider")
    dsub = delete.add_subparsers(dest="what", required=True)
    dm = dsub.add_parser("model", help="delete a model from a provider (its files too)")
    dm.add_argument("name", help="model name")
    dm.add_argument("-p", "--provider", help="provider (default: the one that has it)")
    dm.add_argument("-s", "--for", "--service", dest="service", help="service name")
    dp = dsub.add_parser("service_provider", aliases=["provider"], help="delete a provider")
    dp.add_argument("name", help="provider name")
    dm.set_defaults(func=cmd_delete)
    dp.set_defaults(func=cmd_delete, what="service_provider")

    inst = sub.add_parser("install", help="install a service (local engine and default model, "
                          "or a remote provider), or `install service_provider -f file.json`")
    inst.add_argument("service", help="service name (chat, embed, ...) or service_provider")
    inst.add_argument("-r", "--remote", action="store_true", help="use a remote provider")
    inst.add_argument("--name", help="provider name (remote default: remote_<flavor>_<service>)")
    inst.add_argument("--flavor", help="API flavor or plugin name of the provider")
    inst.add_argument("--remote-url", "--remote_url", dest="remote_url", help="remote API URL")
    inst.add_argument("--method", default="POST", help="HTTP method of the remote API")
    inst.add_argument("--auth-type", "--auth_type", dest="auth_type", choices=AUTH_TYPES)
    inst.add_argument("--auth-key", "--auth_key", dest="auth_key",
                      help="credentials as a JSON object string, e.g. '{\"api_key\": \"...\"}'")
    inst.add_argument("--model", help="model to pull instead of the default")
    inst.add_argument("--skip-model", "--skip_model", dest="skip_model", action="store_true",
                      help="do not pull a model")
    inst.add_argument("-f", "--file", help="provider JSON file (install service_provider)")
    inst.set_defaults(func=cmd_install)

    pull = sub.add_parser("pull", help="pull a model with a live progress bar")
    pull.add_argument("model", help="model name")
    pull.add_argument("-f", "--for", dest="service", required=True, help="service, e.g. chat")
    pull.add_argument("-p", "--provider", help="provider (default: the service's only one)")
    pull.add_argument("-r", "--remote", action="store_true", help="a remote provider's model")
    pull.set_defaults(func=cmd_pull)

    imp = sub.add_parser("import", help="import services and providers from a .aog file")
    imp.add_argument("file", help=".aog JSON file (from `aogstream export`)")
    imp.set_defaults(func=cmd_import)
    exp = sub.add_parser("export", help="export services and providers (never credentials)")
    exp.add_argument("target", nargs="?", choices=["to-file", "to-stdout"],
                     help="AOG's spelling; default: stdout unless -f is given")
    exp.add_argument("-f", "--file", help="write here instead of stdout")
    exp.add_argument("--service", help="only this service")
    exp.add_argument("--provider", help="only this provider")
    exp.add_argument("--model", help="only this model")
    exp.set_defaults(func=cmd_export)

    plugin = sub.add_parser("plugin", help="list, install and control plugins")
    psub = plugin.add_subparsers(dest="action", required=True)
    p = psub.add_parser("list", help="plugins and their state")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = psub.add_parser("info", help="one plugin's details")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = psub.add_parser("install", help="install a plugin folder or .tar.gz/.zip archive")
    p.add_argument("path", help="plugin folder or archive")
    for action, text in (("enable", "enable (and start) a plugin, also after restarts"),
                         ("disable", "stop a plugin and keep it off, also after restarts"),
                         ("load", "load a plugin from <data dir>/plugins or start a stopped "
                                  "one"),
                         ("stop", "stop a running plugin")):
        p = psub.add_parser(action, help=text)
        p.add_argument("name")
    p = psub.add_parser("run", help="run a native plugin's command line (its "
                        "command_line.execute), in this process")
    p.add_argument("name", help="the native plugin's ID")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the plugin's flags and arguments")
    p = psub.add_parser("delete", help="stop and delete plugins and their providers")
    p.add_argument("names", nargs="+", metavar="name")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    plugin.set_defaults(func=cmd_plugin)

    chat = sub.add_parser("chat", help="chat in the terminal; answers stream as they come")
    chat.add_argument("message", nargs="*", help="one message (none: read lines from stdin)")
    chat.add_argument("--model", help="model (default: the service's default)")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-tokens", type=int, help="answer length limit")
    chat.add_argument("--temperature", type=float, help="sampling temperature")
    chat.add_argument("-v", "--verbose", action="store_true",
                      help="say which provider served each answer")
    chat.set_defaults(func=cmd_chat)

    tr = sub.add_parser("transcribe", help="speech to text from a file, or realtime from a "
                        "raw PCM16 16 kHz mono recording played as a microphone")
    tr.add_argument("file", nargs="?", help="audio file (WAV, MP3, FLAC, ...; .raw/.pcm = PCM16)")
    tr.add_argument("--mic-file", help="a WAV (resampled to 16 kHz mono) or raw PCM16 16 kHz "
                    "mono file, streamed in 20 ms frames")
    tr.add_argument("--pace", type=float, default=1.0,
                    help="--mic-file speed: 1 = real time (default), 0 = as fast as possible")
    tr.add_argument("--rate", type=int, default=RATE, help="sample rate of .raw/.pcm files")
    tr.add_argument("--language", help="language code (the shipped engines: en)")
    tr.add_argument("--model", help="model (default: the service's default)")
    tr.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    tr.set_defaults(func=cmd_transcribe)


def main(argv: list[str] | None = None) -> int:
    """Run the `aogstream` command with `argv` (default: the process's); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `aogstream`: the help, not a usage error
        parser.print_help()
        return 0
    if args.command not in ("server", "engine", "db"):
        return run(args)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "db":
        from aogstream.cli.database import cmd_db

        return cmd_db(args)
    if args.command == "engine":
        from aogstream.cli.engines import cmd_engine

        return cmd_engine(args)
    if args.action == "stop":
        return server_stop(Config.from_env(data_dir=args.data_dir).data_dir)
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 (one per two cores) or more")
    cfg = Config.from_env(host=args.host, port=args.port, data_dir=args.data_dir,
                          plugin_dirs=args.plugin_dir, workers=args.workers,
                          database_url=args.database_url)
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
    return serve_foreground(cfg)


def run(args: argparse.Namespace) -> int:
    """Run one client command; errors become one line on stderr and an exit code."""
    func: Callable[[Api, argparse.Namespace], int] = args.func
    try:
        api = Api(server_url())
    except CliError as err:
        print(err.message, file=sys.stderr)
        return err.code
    try:
        return func(api, args)
    except CliError as err:
        sys.stdout.flush()
        print(err.message, file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        api.close()
