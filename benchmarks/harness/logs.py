"""What a benchmark tells the person running it: progress lines on stderr (the markdown
report alone goes to stdout) and the tail of a process's log in an error message.
"""

from __future__ import annotations

import sys
from pathlib import Path


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def progress(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)
