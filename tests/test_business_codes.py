"""AOG's business codes are defined once, in `aogstream/errors.py`.

Real parts: the source tree, parsed with `ast` (nothing is imported but `errors`).
Proven: no module but `errors.py` builds a `Bcode` from literal numbers (a second table
could drift from the first, as management's `MODEL_NOT_FOUND` once did: 30003 there,
100301 here), no two names in the table carry the same status and code, and the
management success messages cover every family the management routes answer for.
"""

from __future__ import annotations

import ast
from pathlib import Path

from aogstream import errors

PACKAGE = Path(errors.__file__).parent


def _literal_bcodes(path: Path) -> list[int]:
    """Lines where `Bcode(<int>, <int>)` (or `errors.Bcode(...)`) is called."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(
            fn, ast.Attribute) else ""
        if name == "Bcode" and node.args and all(
                isinstance(a, ast.Constant) and isinstance(a.value, int) for a in node.args):
            lines.append(node.lineno)
    return lines


def test_no_module_but_errors_defines_a_business_code() -> None:
    found = {str(p.relative_to(PACKAGE)): lines for p in sorted(PACKAGE.rglob("*.py"))
             if p != Path(errors.__file__) and "gen" not in p.parts
             and (lines := _literal_bcodes(p))}
    assert found == {}, f"business codes defined outside errors.py (file: lines): {found}"


def test_each_status_and_code_has_one_name() -> None:
    seen: dict[errors.Bcode, str] = {}
    for name, value in vars(errors).items():
        if isinstance(value, errors.Bcode):
            assert value not in seen, f"{name} repeats {seen[value]} ({value})"
            seen[value] = name
    assert errors.MODEL_NOT_FOUND.code == 30003  # the model family's, as AOG
    assert errors.PLUGIN_MODEL_NOT_FOUND.code == 100301


def test_success_messages_cover_the_management_families() -> None:
    for ok in (errors.SERVICE_OK, errors.PROVIDER_OK, errors.MODEL_OK, errors.PLUGIN_OK):
        assert errors.SUCCESS_MESSAGES[ok.code]
