"""The operator's plugin policy file, `<data dir>/config.yaml`, read when it changes.

One file holds every per-plugin decision an operator makes by hand (native plugins'
`plugins.enabled`/`plugins.configs`, plugin LLM access under `plugins.entries`), so
this loader knows nothing of what is inside: it returns the parsed mapping and
whoever reads a key decides what a missing or malformed value means. Keys it does not
know are kept as they are.

The file is stat'ed on every `read()` and parsed again only when its modification
time, size or inode changed, so an edit applies to the next call without a restart
and an unchanged file costs one `stat`. A file that cannot be read or parsed is not
hidden: `read()` says why (`ConfigSnapshot.error`), the reason is logged once per
change, and a consumer that must fail closed (the LLM trust gate) does.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import attrs
import yaml

log = logging.getLogger("aogstream.config")

CONFIG_FILE = "config.yaml"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # an operator's file, never megabytes


@attrs.frozen
class ConfigSnapshot:
    """What the file said at one moment.

    `data` is the top-level mapping ({} when the file does not exist, which is a
    valid, empty policy); `error` is why it could not be used ("" when it could), in
    which case `data` is {} and fail-closed readers deny.
    """

    data: dict[str, Any]
    error: str = ""
    exists: bool = False

    def section(self, *path: str) -> dict[str, Any] | None:
        """The mapping at `path` (e.g. "plugins", "entries", "<id>"), or None when a
        step is missing or is not a mapping."""
        node: Any = self.data
        for key in path:
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node if isinstance(node, dict) else None


class PluginConfigFile:
    """`<data dir>/config.yaml`, parsed again only when it changed (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._snapshot = ConfigSnapshot({})

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PluginConfigFile:
        return cls(Path(data_dir) / CONFIG_FILE)

    def read(self) -> ConfigSnapshot:
        """The file as it is now (the cached parse when it has not changed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            with self._lock:
                self._stamp, self._snapshot = None, ConfigSnapshot({})
            return self._snapshot
        except OSError as exc:
            return self._failed(None, f"cannot read {CONFIG_FILE}: {exc.strerror or exc}")
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp == self._stamp:
                return self._snapshot
        return self._parse(stamp)

    def _parse(self, stamp: tuple[int, int, int]) -> ConfigSnapshot:
        if stamp[1] > MAX_CONFIG_BYTES:
            return self._failed(stamp, f"{CONFIG_FILE} is larger than "
                                f"{MAX_CONFIG_BYTES // (1024 * 1024)} MiB")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            return self._failed(stamp, f"cannot read {CONFIG_FILE}: {reason}")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            return self._failed(stamp, f"{CONFIG_FILE} is not valid YAML{where}")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return self._failed(stamp, f"{CONFIG_FILE} must hold a mapping at the top level, "
                                f"not {type(data).__name__}")
        snap = ConfigSnapshot(data, "", True)
        with self._lock:
            self._stamp, self._snapshot = stamp, snap
        log.info("read %s", CONFIG_FILE)
        return snap

    def _failed(self, stamp: tuple[int, int, int] | None, reason: str) -> ConfigSnapshot:
        snap = ConfigSnapshot({}, reason, True)
        with self._lock:
            changed = stamp is None or stamp != self._stamp or self._snapshot.error != reason
            self._stamp, self._snapshot = stamp, snap
        if changed:
            log.error("%s; plugin overrides that depend on it are denied until it is fixed",
                      reason)
        return snap
