"""Plugin starts leave no `pluginXXXX` folders in the temporary directory.

Real: a gateway process with its own private TMPDIR (inherited by its plugin processes,
where go-plugin's unix socket folder is made), the echo test plugin as a real process,
and kill -9 of that process. Proven: while plugins run, their socket folders are in that
TMPDIR (so the test sees where they go); after a plugin is killed and restarted only the
live one's folder remains (the host removes the dead one's); after the gateway stops, no
`plugin*` folder is left.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Gateway


def socket_dirs(tmp: Path) -> set[str]:
    return {p.name for p in tmp.iterdir() if p.name.startswith("plugin") and p.is_dir()}


def wait_until[T](what: str, check: Callable[[], T], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout} s")
        time.sleep(0.05)


def test_plugin_socket_folders_are_removed_when_plugins_exit(tmp_path):
    private = tmp_path / "tmp"
    private.mkdir()
    gw = Gateway(tmp_path / "gw", {"TMPDIR": str(private)}).start()
    try:
        first = gw.wait_plugin_running(timeout=30)
        running = wait_until("a socket folder", lambda: socket_dirs(private))
        assert len(running) == 1, running

        os.kill(first["pid"], signal.SIGKILL)  # no chance to clean up after itself
        gw.wait_plugin_running(not_pid=first["pid"], timeout=30)
        after = wait_until("only the new plugin's folder",
                           lambda: (d := socket_dirs(private)) and d != running and
                           len(d) == 1 and d)
        assert not (after & running)
    finally:
        gw.stop()
    assert socket_dirs(private) == set(), sorted(private.iterdir())
