"""The `aogstream` command: a client of a running gateway; `server` and `engine` start
things.

    entry          the argument parser and `main`, which dispatches a parsed command
    client         the client of a running gateway (`Api`, `CliError`, `AOG_HOST`)
    output         tables, JSON and progress lines the client commands print
    server         `server start|stop` (foreground or daemon) and `version`
    services       `get|edit|delete|install|pull`: services, providers, models
    plugins        `plugin ...`
    chat           `chat`
    transcribe     `transcribe` (a file, or realtime with `--mic-file`)
    import_export  `import|export` of `.aog` files
    engines        `engine install|status`: local plugins' engines, without a gateway
"""

from aogstream.cli.entry import main

__all__ = ["main"]
