"""Plugin folders on disk: check one (manifest, this platform's executable, links that
stay inside), install it from a folder or an archive, and remove it.

Why apart from `plugins`: everything here blocks (file system work), so it runs in a
worker thread, and it is where untrusted input (a folder or archive a request names) is
checked before anything of it is put in the plugins folder. Archives are unpacked by
`archives`, which explains why by hand.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from aogstream import manifest as m
from aogstream.errors import PLUGIN_CONFLICT, PLUGIN_INVALID, GatewayError
from aogstream.management import archives


def _bad(message: str) -> GatewayError:
    return GatewayError(PLUGIN_INVALID, message)


def validated_manifest(folder: Path, dir_match: bool, shown: str = "") -> m.PluginManifest:
    """The folder's manifest, with this platform's executable present inside it."""
    try:
        man = m.load_manifest(folder, require_dir_match=dir_match)
    except m.ManifestError as exc:
        text = str(exc).replace(str(folder), shown) if shown else str(exc)
        raise _bad(f"not a valid plugin: {text}") from None
    try:
        exe = man.executable_path()
    except m.PlatformNotSupportedError as exc:
        raise _bad(f"plugin {man.provider.name} has no executable for this platform: "
                   f"{exc.field}: {exc.reason}") from None
    goos, goarch = m.current_platform()
    entry = f"platforms.{goos}_{goarch}.executable"
    rel = man.platforms[f"{goos}_{goarch}"].executable
    if not exe.is_file():
        raise _bad(f"plugin {man.provider.name}: the executable {rel!r} ({entry}) is "
                   f"missing from {shown or folder}")
    if not exe.resolve().is_relative_to(folder.resolve()):
        raise _bad(f"plugin {man.provider.name}: the executable {rel!r} ({entry}) points "
                   f"outside the plugin folder")
    return man


def _check_links(folder: Path, shown: str) -> None:
    """Refuse symlinks that lead out of the plugin folder (a copy would follow them)."""
    real = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink() and not p.resolve().is_relative_to(real):
                raise _bad(f"{shown}: {p.relative_to(folder)} is a link to "
                           f"{os.readlink(p)}, outside the plugin folder")


def _extract(archive: Path, into: Path) -> None:
    """Unpack by hand, every member checked first (see management/archives.py for why)."""
    try:
        archives.extract(archive, into)
    except archives.ArchiveError as exc:
        raise _bad(str(exc)) from None


def _archive_root(into: Path, shown: str) -> Path:
    """The plugin folder inside an unpacked archive: its top level, or its one folder."""
    if (into / m.MANIFEST_YAML).exists() or (into / m.MANIFEST_JSON).exists():
        return into
    subs = [p for p in into.iterdir() if p.name not in ("__MACOSX",)
            and not p.name.startswith(".")]
    if len(subs) == 1 and subs[0].is_dir():
        return subs[0]
    raise _bad(f"archive {shown} has no {m.MANIFEST_YAML} at its top level or in a single "
               f"top-level folder")


def install_files(src: Path, root: Path, loaded: set[str]) -> Path:
    """Check `src` (folder or archive) and put it at `<root>/<name>`; returns that path."""
    if not src.exists():
        raise _bad(f"path {str(src)!r} does not exist (give the absolute path of a plugin "
                   f"folder or of a .tar.gz/.zip archive)")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=root))
    try:
        if src.is_dir():
            folder, shown = src, str(src)
        elif archives.is_archive(src):
            _extract(src, staging / "unpacked")
            shown = src.name
            folder = _archive_root(staging / "unpacked", shown)
        else:
            raise _bad(f"{src.name} is neither a folder nor a .tar.gz/.tgz/.tar/.zip archive")
        man = validated_manifest(folder, False, shown if folder != src else "")
        name = man.provider.name
        dest = root / name
        if name in loaded:
            raise GatewayError(PLUGIN_CONFLICT, f"a plugin named {name!r} is already loaded; "
                                                f"delete it first (DELETE /plugin/delete)")
        if dest.exists() or dest.is_symlink():
            raise GatewayError(PLUGIN_CONFLICT, f"{dest} already exists; load it with POST "
                                                f"/plugin/load or delete it first")
        _check_links(folder, shown)
        if folder == src:
            staged = staging / name
            shutil.copytree(src, staged, symlinks=False,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            staged = folder
        staged.rename(dest)  # appears complete or not at all
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_tree(folder: Path) -> None:
    if folder.is_symlink():
        folder.unlink()
        return
    # rename first so a concurrent discovery never sees half a plugin
    trash = folder.with_name(f".deleting-{folder.name}-{os.getpid()}")
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
