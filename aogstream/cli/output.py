"""What the client commands print: aligned tables, JSON, a pull's progress line, and the
JSON files they read (provider definitions, `.aog` imports)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from aogstream.cli.client import CliError


def table(headers: list[str], rows: list[list[Any]], out: TextIO | None = None) -> None:
    """Aligned columns, like AOG's `aog get ...` output."""
    out = out or sys.stdout
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    for row in [headers, *cells]:
        out.write("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip() + "\n")
    out.flush()


def dump_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def read_json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {what} file {path}: {exc.strerror or exc}", 2) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what} file {path} is not valid JSON: {exc}", 2) from exc


class Progress:
    """A pull's progress: one redrawn line on a terminal, else a line per 10 %."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.shown = -1
        self.status = ""
        self.open_line = False

    def update(self, ev: dict[str, Any]) -> None:
        status = str(ev.get("status") or "")
        total, done = int(ev.get("total") or 0), int(ev.get("completed") or 0)
        if not total:
            if status != self.status:
                self.end()
                self.out.write(f"{status}\n")
            self.status = status
            self.out.flush()
            return
        if status != self.status:
            self.end()
            self.shown = -1
        pct = min(100, int(100 * done / total))
        sizes = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
        if self.tty:
            filled = pct * 30 // 100
            self.out.write(f"\r{status[:36]:36} [{'#' * filled}{'.' * (30 - filled)}] "
                           f"{pct:3d}% {sizes}\x1b[K")
            self.open_line = True
            self.shown = pct
        elif self.shown < 0 or pct // 10 > self.shown // 10:
            self.out.write(f"{status} {pct}% ({sizes})\n")
            self.shown = pct
        self.status = status
        self.out.flush()

    def end(self) -> None:
        if self.open_line:
            self.out.write("\n")
            self.out.flush()
            self.open_line = False


def short(text: str, n: int) -> str:
    """`text` on one line, cut to `n` characters with an ellipsis (table cells)."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
