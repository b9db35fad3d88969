"""Where a plugin keeps its engine and models."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "AOGSTREAM_PLUGIN_DATA_DIR"


def plugin_data_dir(plugin_name: str, plugin_dir: Path) -> Path:
    """The plugin's own data directory.

    aogstream passes it in AOGSTREAM_PLUGIN_DATA_DIR (under its data directory, so
    engines never land in the gateway's environment); under another host (AOG sets
    nothing) the plugin keeps its data in `data/` inside its own folder.
    """
    given = os.environ.get(DATA_DIR_ENV)
    root = Path(given) if given else plugin_dir / "data"
    root.mkdir(parents=True, exist_ok=True)
    return root
