"""Report cells and markdown tables: numbers with n/a for missing values, ratios such as
`1.23×`, targets next to a figure (`1.2 ms (≤ 1.5: met)`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def fmt(v: float, digits: int = 2, sign: bool = False) -> str:
    if v != v:
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def ratio(a: float, b: float) -> str:
    """a / b as `1.23×` (n/a when either is missing or b is 0)."""
    if a != a or b != b or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def target(value: float, limit: float, unit: str = "", higher_is_better: bool = False,
           digits: int = 2) -> str:
    """`1.23 ms (≤ 1.5: met)`: a figure with the issue's target next to it."""
    if value != value:
        return f"n/a (target {'≥' if higher_is_better else '≤'} {limit:g}{unit})"
    met = value >= limit if higher_is_better else value <= limit
    op = "≥" if higher_is_better else "≤"
    return f"**{value:.{digits}f}**{unit} ({op} {limit:g}: {'met' if met else 'MISSED'})"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
             align: str = "") -> list[str]:
    """Markdown table lines; `align` is one letter per column, l or r (default: first
    two left, the rest right)."""
    align = align or ("ll" + "r" * (len(headers) - 2))
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
