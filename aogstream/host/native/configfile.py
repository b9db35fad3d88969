"""Editing `<data dir>/config.yaml` for the management API (spec §5.2).

The management routes change one plugin's subtree, `plugins.configs.<id>`, and nothing
else: the rest of the document (other plugins, plugin LLM access's trust gate, keys of
the operator's own) is read and written back as it was. The file is replaced
atomically (a temporary file in the same folder, then a rename), keeping its mode, so
a reader — the config watcher of each serving process — never sees half a file.
YAML comments do not survive a write (the document is re-serialized), as in CPA.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from aogstream.host.native.loader import CONFIG_FILE


class ConfigFileError(Exception):
    """config.yaml cannot be read or written (the message says why, without paths)."""


def load_doc(data_dir: Path) -> dict[str, Any]:
    """The whole document ({} when there is no file yet)."""
    try:
        text = (data_dir / CONFIG_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigFileError(f"cannot read {CONFIG_FILE}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigFileError(f"{CONFIG_FILE} is not valid YAML; fix it first") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigFileError(f"{CONFIG_FILE} must be a mapping at the top")
    return doc


def plugin_configs(doc: dict[str, Any]) -> dict[str, Any]:
    """`plugins.configs` of `doc`, created when missing."""
    plugins = doc.get("plugins")
    if not isinstance(plugins, dict):
        if plugins is not None:
            raise ConfigFileError(f"{CONFIG_FILE}: 'plugins' must be a mapping")
        plugins = doc["plugins"] = {}
    configs = plugins.get("configs")
    if not isinstance(configs, dict):
        if configs is not None:
            raise ConfigFileError(f"{CONFIG_FILE}: 'plugins.configs' must be a mapping")
        configs = plugins["configs"] = {}
    return configs


def save_doc(data_dir: Path, doc: dict[str, Any]) -> None:
    """Write `doc` back atomically, keeping the file's mode (0600 for a new file)."""
    path = data_dir / CONFIG_FILE
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    except OSError as exc:
        raise ConfigFileError(exc.strerror or "cannot stat the file") from None
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".yaml", dir=data_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ConfigFileError(exc.strerror or "cannot write the file") from None
