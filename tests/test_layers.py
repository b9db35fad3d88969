"""The layer rules of the architecture page hold: who may import whom.

Real parts: the source files themselves, parsed with `ast` (no module is imported, so
an import that only runs inside a function is seen too). Proven, one test per rule:
the neutral core knows nothing of HTTP, gRPC, processes or storage; the north side
(gateway, routes, framing, sessions) reaches plugins only through the `Provider`
interface, never `host/` or `rpc/`; a Python plugin's SDK depends on the wire layer and
the manifest only, and shipped plugins on the SDK and the engine toolkit only; the
store depends on nothing above it; only the CLI's server command starts the serving
processes (the routes never import them); only the entry point imports the CLI; and no module
reaches for another module's private names.

A rule that is not yet true everywhere lists its exceptions by name in `KNOWN`, and a
test fails when an exception is no longer needed, so the list can only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from conftest import REPO

PKG = REPO / "aogstream"

# (importer, imported module) pairs that break a rule today, each with why it is here.
KNOWN: dict[tuple[str, str], str] = {
    ("aogstream.gateway", "aogstream.host.process"):
        "plugin discovery and supervision still start from Gateway.start",
    ("aogstream.gateway", "aogstream.host.native.loader"):
        "native plugins are loaded from Gateway.start, as process plugins are discovered",
    ("aogstream.gateway", "aogstream.rpc.bridge"):
        "the gateway owns the gRPC loop its supervisors launch plugins on",
}
# (importer, module) pairs still importing private helpers, and why.
KNOWN_PRIVATE: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(paths: list[Path]) -> Iterator[tuple[str, str, str]]:
    """(importer, module, name) for every absolute `aogstream` import; name is "" for a
    plain `import aogstream.x`."""
    for path in paths:
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "aogstream":
                for alias in node.names:
                    yield importer, node.module, alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "aogstream":
                        yield importer, alias.name, ""


def _package_files() -> list[Path]:
    return [p for p in sorted(PKG.rglob("*.py")) if "rpc/gen" not in p.as_posix()]


def _target(module: str, name: str) -> str:
    """`from aogstream import manifest` imports the module aogstream.manifest."""
    if module == "aogstream" and name and (PKG / f"{name}.py").exists():
        return f"aogstream.{name}"
    if module == "aogstream" and name and (PKG / name / "__init__.py").exists():
        return f"aogstream.{name}"
    return module


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _edges() -> list[tuple[str, str]]:
    return sorted({(imp, _target(mod, name)) for imp, mod, name in _imports(_package_files())})


def _broken(importers: tuple[str, ...], allowed: tuple[str, ...] = (),
            forbidden: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    out = []
    for importer, target in _edges():
        if not _in(importer, *importers) or _in(target, *importers):
            continue
        bad = (forbidden and _in(target, *forbidden)) or \
            (allowed and target != "aogstream" and not _in(target, *allowed))
        if bad and (importer, target) not in KNOWN:
            out.append((importer, target))
    return out


CORE = ("aogstream.invocation", "aogstream.errors", "aogstream.manifest",
        "aogstream.safejson", "aogstream.convert")


def test_the_core_knows_nothing_of_http_grpc_processes_or_storage():
    assert _broken(CORE, allowed=CORE) == []


def test_the_north_side_reaches_plugins_only_through_the_provider_interface():
    north = ("aogstream.gateway", "aogstream.http", "aogstream.sse", "aogstream.bidi")
    assert _broken(north, forbidden=("aogstream.host", "aogstream.rpc")) == []


def test_the_sdk_depends_on_the_wire_layer_and_the_manifest_only():
    assert _broken(("aogstream.sdk",),
                   allowed=("aogstream.sdk", "aogstream.rpc", "aogstream.manifest")) == []


def test_the_store_depends_on_nothing_above_it():
    assert _broken(("aogstream.store",),
                   allowed=("aogstream.store", "aogstream.errors", "aogstream.config")) == []


def test_routes_never_import_the_serving_processes():
    """http/ is routes only; serving/ builds processes around it (no cycle between them)."""
    users = {imp for imp, target in _edges() if _in(target, "aogstream.serving")
             and not _in(imp, "aogstream.serving")}
    assert users <= {"aogstream.cli.server"}, users


def test_only_the_entry_point_imports_the_cli():
    users = {imp for imp, target in _edges() if _in(target, "aogstream.cli")
             and not _in(imp, "aogstream.cli")}
    assert users <= {"aogstream.__main__"}, users


def test_shipped_plugins_use_only_the_sdk_and_the_engine_toolkit():
    files = [p for d in ("plugins",) for p in sorted((REPO / d).rglob("*.py"))]
    files += [p for p in sorted((REPO / "plugins").rglob("*")) if p.is_file()
              and p.parent.name == "bin" and p.read_text(errors="replace").startswith("#!")
              and "python" in p.read_text(errors="replace").splitlines()[0]]
    assert len(files) >= 6, files  # every shipped plugin has at least its plugin.py
    allowed = ("aogstream.sdk", "aogstream.engines", "aogstream.manifest", "aogstream.rpc")
    bad = [(imp, _target(mod, name)) for imp, mod, name in _imports(files)
           if not _in(_target(mod, name), *allowed)]
    assert bad == []


def test_no_module_imports_another_modules_private_names():
    private = [(imp, mod, name) for imp, mod, name in _imports(_package_files())
               if name.startswith("_") and not name.startswith("__")
               and (imp, mod) not in KNOWN_PRIVATE]
    assert private == []


def test_every_known_exception_is_still_needed():
    edges = set(_edges())
    stale = [pair for pair in KNOWN if pair not in edges]
    assert stale == [], f"no longer imported, remove from KNOWN: {stale}"
    private = {(imp, mod) for imp, mod, name in _imports(_package_files())
               if name.startswith("_") and not name.startswith("__")}
    stale = [pair for pair in KNOWN_PRIVATE if pair not in private]
    assert stale == [], f"no longer imported, remove from KNOWN_PRIVATE: {stale}"
