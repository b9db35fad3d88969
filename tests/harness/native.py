"""A gateway serving native plugin libraries, as the tests/test_native_*.py modules set
one up: the libraries are built (tools/build-native-plugins.sh; quick when nothing
changed), copied into a plugin folder of the gateway's own under `linux/<arch>/` (or
loose at its top, where the loader lists what it cannot load), enabled in the data
directory's config.yaml, and their events file (NATIVE_TEST_EVENTS) is read back.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import PLUGIN_DIR, REPO, Gateway

BUILT = REPO / ".cache" / "native-plugins"  # where the build script puts the libraries


def arch() -> str:
    """This machine's architecture as CLIProxyAPI names plugin folders (Go's GOARCH)."""
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def build() -> None:
    subprocess.run([str(REPO / "tools" / "build-native-plugins.sh")], check=True)


@contextmanager
def native_gateway(work: Path, libraries: list[str], config: str,
                   env: dict[str, str] | None = None,
                   loose: dict[str, bytes] | None = None) -> Iterator[Gateway]:
    """A started gateway (the Python test plugins too) with the built `libraries` (names
    without `.so`) installed for this machine, `loose` files at the top of the plugin
    folder, and `config` as the text under `plugins:` `configs:` in its config.yaml;
    `gw.native_events` is the events file the plugins write. Stopped on exit."""
    build()
    plugins = work / "native-plugins"
    (plugins / "linux" / arch()).mkdir(parents=True)
    for name in libraries:
        shutil.copy(BUILT / f"{name}.so", plugins / "linux" / arch() / f"{name}.so")
    for file_name, data in (loose or {}).items():
        (plugins / file_name).write_bytes(data)
    data_dir = work / "gw" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "config.yaml").write_text("plugins:\n  enabled: true\n  configs:\n" + config)
    events_file = work / "events.txt"
    gw = Gateway(work / "gw", {"NATIVE_TEST_EVENTS": str(events_file), **(env or {})},
                 plugin_dir=[PLUGIN_DIR, plugins])
    gw.start()
    gw.native_events = events_file  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        gw.stop()


def enabled(*names: str) -> str:
    """The config.yaml lines that enable each named plugin with no settings."""
    return "".join(f"    {name}:\n      enabled: true\n" for name in names)


def native_events(gw: Gateway) -> list[str]:
    """The lines the plugins wrote to their events file so far ([] before the first)."""
    path: Path = gw.native_events  # type: ignore[attr-defined]
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
