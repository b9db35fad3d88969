"""Plugin archives (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .zip) unpacked without trusting
the archive, its declared sizes, or the interpreter's `tarfile` filter.

Why by hand: `tarfile`'s `filter="data"` in Python 3.13.0 is defeated by a chain of
symlinks whose resolved path overflows PATH_MAX (CVE-2025-4517), and `tarfile` reads a
pax header whole into memory while merely listing members, so a few hundred KB of gzip
can make it allocate a gigabyte. Here a tar stream is parsed by this module itself, with
every header size bounded before it is read, and a zip's central directory is bounded
before `zipfile` reads it. Nothing is written until every member has been checked:

* only regular files and folders are accepted: symlinks, hardlinks, devices, fifos and
  sparse files are refused, so no path can be redirected while extracting;
* a name must be relative, made of plain components (no `..`, no backslash, no NUL, no
  drive letter), at most MAX_NAME_BYTES long and MAX_DEPTH deep, and appear once; a file
  may not also be a folder of another member;
* limits (environment variable, default): total unpacked bytes
  (`AOGSTREAM_ARCHIVE_MAX_BYTES`, 2 GiB), members (`AOGSTREAM_ARCHIVE_MAX_MEMBERS`,
  10,000), one member (`AOGSTREAM_ARCHIVE_MAX_MEMBER_BYTES`, 512 MiB), one pax / long
  name header or the zip central directory per member (`AOGSTREAM_ARCHIVE_MAX_HEADER_BYTES`,
  64 KiB). The archive file itself may be no larger than the total.

Sizes are enforced on the bytes actually decompressed and written, never on what the
archive declares. Files are created with O_EXCL|O_NOFOLLOW in folders this module made
itself, so a path can only ever land inside the target folder. On any failure the target
folder is removed, and the error names the member and the rule or limit it broke.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import attrs

BLOCK = 512
CHUNK = 1 << 20
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32
DEFAULT_MAX_BYTES = 2 << 30
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_MEMBER_BYTES = 512 << 20
DEFAULT_MAX_HEADER_BYTES = 64 << 10

ENV_MAX_BYTES = "AOGSTREAM_ARCHIVE_MAX_BYTES"
ENV_MAX_MEMBERS = "AOGSTREAM_ARCHIVE_MAX_MEMBERS"
ENV_MAX_MEMBER_BYTES = "AOGSTREAM_ARCHIVE_MAX_MEMBER_BYTES"
ENV_MAX_HEADER_BYTES = "AOGSTREAM_ARCHIVE_MAX_HEADER_BYTES"

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
ZIP_SUFFIXES = (".zip",)
SUFFIXES = TAR_SUFFIXES + ZIP_SUFFIXES

FILE, DIR = "file", "dir"
_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


class ArchiveError(Exception):
    """The archive was refused; the message names the member and the rule or limit."""


@attrs.frozen
class Limits:
    """What one archive may unpack to; see the module docstring for the variables."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_bytes=_env_size(ENV_MAX_BYTES, DEFAULT_MAX_BYTES),
            max_members=_env_size(ENV_MAX_MEMBERS, DEFAULT_MAX_MEMBERS),
            max_member_bytes=_env_size(ENV_MAX_MEMBER_BYTES, DEFAULT_MAX_MEMBER_BYTES),
            max_header_bytes=_env_size(ENV_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_BYTES),
        )


def _env_size(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ArchiveError(f"{name}={raw!r} is not a positive whole number; unset it to "
                           f"use the default {default}")
    return value


@attrs.define
class Member:
    """One checked archive entry: its path inside the target, kind, and size."""

    name: str  # as written in the archive, for messages
    parts: tuple[str, ...]
    kind: str  # FILE or DIR
    executable: bool = False
    size: int = 0


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def extract(archive: Path, into: Path, limits: Limits | None = None) -> list[Member]:
    """Check every member of `archive`, then unpack it into the new folder `into`.

    `into` must not exist yet (its parent must). On failure nothing is left of `into`.
    """
    limits = limits or Limits.from_env()
    shown = archive.name
    try:
        size = archive.stat().st_size
    except OSError as exc:
        raise ArchiveError(f"archive {shown} cannot be read: {exc.strerror}") from None
    if size > limits.max_bytes:
        raise ArchiveError(f"archive {shown} is {size} bytes, over the {limits.max_bytes} "
                           f"byte limit ({ENV_MAX_BYTES})")
    os.mkdir(into, 0o700)
    try:
        if archive.name.lower().endswith(ZIP_SUFFIXES):
            return _extract_zip(archive, into, limits, shown)
        return _extract_tar(archive, into, limits, shown)
    except BaseException:
        _remove(into)
        raise


# ---- names -------------------------------------------------------------------------------


def clean_name(raw: str) -> tuple[str, ...]:
    """The plain components of an archive member name, or ValueError saying why not."""
    if "\x00" in raw:
        raise ValueError("contains a NUL byte")
    if "\\" in raw:
        raise ValueError("contains a backslash (use / between folders)")
    if raw.startswith("/"):
        raise ValueError("is an absolute path")
    if len(raw) >= 2 and raw[1] == ":" and raw[0].isalpha():
        raise ValueError("starts with a drive letter")
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ValueError(f"is longer than {MAX_NAME_BYTES} bytes")
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("has a '..' component, which could lead outside the plugin folder")
    if len(parts) > MAX_DEPTH:
        raise ValueError(f"is more than {MAX_DEPTH} folders deep")
    for p in parts:
        if len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise ValueError(f"has a component longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


class _Plan:
    """The members seen so far: duplicates, file/folder clashes and the limits."""

    def __init__(self, limits: Limits, shown: str) -> None:
        self.limits = limits
        self.shown = shown
        self.members: list[Member] = []
        self.kinds: dict[tuple[str, ...], str] = {}
        self.total = 0

    def refuse(self, name: str, why: str) -> ArchiveError:
        return ArchiveError(f"archive {self.shown}: member {name!r} {why}; refusing the "
                            f"archive")

    def add(self, name: str, kind: str, size: int, executable: bool = False) -> Member | None:
        """Check one member; None for the archive's own top folder (`./`)."""
        try:
            parts = clean_name(name)
        except ValueError as exc:
            raise self.refuse(name, str(exc)) from None
        if not parts:
            if kind == DIR:
                return None
            raise self.refuse(name, "names no file")
        if len(self.members) >= self.limits.max_members:
            raise ArchiveError(f"archive {self.shown} has more than {self.limits.max_members} "
                               f"members ({ENV_MAX_MEMBERS}); refusing the archive")
        if kind == FILE and self.kinds.get(parts) == "implied":
            raise self.refuse(name, "is a file but other members use it as a folder")
        if parts in self.kinds and not (kind == DIR and self.kinds[parts] == "implied"):
            raise self.refuse(name, "appears twice in the archive")
        for i in range(1, len(parts)):
            if self.kinds.get(parts[:i]) == FILE:
                raise self.refuse(name, f"is inside {'/'.join(parts[:i])!r}, which is a file")
            self.kinds.setdefault(parts[:i], "implied")
        self.kinds[parts] = kind
        self.check_size(name, size, 0)
        member = Member(name, parts, kind, executable, size)
        self.members.append(member)
        return member

    def check_size(self, name: str, member_bytes: int, adding: int) -> None:
        """Refuse once one member or the whole archive is over its limit."""
        self.total += adding
        if member_bytes > self.limits.max_member_bytes:
            raise self.refuse(name, f"unpacks to more than {self.limits.max_member_bytes} "
                                    f"bytes ({ENV_MAX_MEMBER_BYTES})")
        if self.total > self.limits.max_bytes:
            raise ArchiveError(f"archive {self.shown} unpacks to more than "
                               f"{self.limits.max_bytes} bytes ({ENV_MAX_BYTES}), at member "
                               f"{name!r}; refusing the archive")


# ---- writing -----------------------------------------------------------------------------


class _Writer:
    """Creates folders and files under `root` only, counting the bytes actually written."""

    def __init__(self, root: Path, plan: _Plan) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.plan = plan
        plan.total = 0

    def _folder(self, parts: tuple[str, ...]) -> str:
        path = self.real_root
        for p in parts:
            path = os.path.join(path, p)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise ArchiveError(f"archive {self.plan.shown}: {p!r} exists and is not "
                                       f"a folder; refusing the archive") from None
        if os.path.realpath(path) != path or \
                os.path.commonpath([path, self.real_root]) != self.real_root:
            raise ArchiveError(f"archive {self.plan.shown}: {'/'.join(parts)!r} resolves "
                               f"outside the plugin folder; refusing the archive")
        return path

    def folder(self, member: Member) -> None:
        self._folder(member.parts)

    def file(self, member: Member, chunks: Iterator[bytes]) -> None:
        parent = self._folder(member.parts[:-1])
        path = os.path.join(parent, member.parts[-1])
        mode = 0o755 if member.executable else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0), mode)
        written = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                written += len(chunk)
                self.plan.check_size(member.name, written, len(chunk))
                out.write(chunk)
        os.chmod(path, mode)  # whatever the umask made of it


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- tar ---------------------------------------------------------------------------------


def _open_tar_stream(archive: Path) -> BinaryIO:
    """The decompressed tar stream, by the file's magic bytes rather than its suffix."""
    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(archive, "rb")  # type: ignore[return-value]
    return open(archive, "rb")


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        if field[0] & 0x40:
            raise ValueError("negative number")
        return value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _checksum_ok(block: bytes) -> bool:
    try:
        want = _octal(block[148:156])
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return want in (unsigned, signed)


def _pax_records(data: bytes, shown: str) -> dict[str, str]:
    """`<length> <key>=<value>\\n` records (POSIX.1-2001), each checked."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\x00") == b"":
            break
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        record = data[pos:pos + length]
        if length <= 0 or len(record) != length or not record.endswith(b"\n") \
                or b"=" not in record:
            raise ArchiveError(f"archive {shown}: a pax header is malformed; refusing the "
                               f"archive")
        key, _, value = record[space - pos + 1:-1].partition(b"=")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"archive {shown}: a pax header is not UTF-8; refusing the "
                               f"archive") from None
        pos += length
    return out


class _TarReader:
    """Walks a tar stream header by header, reading no more than the limits allow."""

    REGULAR = (b"0", b"\x00", b"7")
    HEADERS = (b"x", b"g", b"L")
    REFUSED = {b"1": "is a hard link", b"2": "is a symbolic link", b"K": "is a link",
               b"3": "is a character device", b"4": "is a block device", b"6": "is a fifo",
               b"S": "is a sparse file"}

    def __init__(self, stream: BinaryIO, limits: Limits, shown: str) -> None:
        self.stream = stream
        self.limits = limits
        self.shown = shown
        # headers, padding and data together: what a valid archive within the limits needs
        self.budget = limits.max_bytes + (limits.max_members * 2 + 16) * (
            limits.max_header_bytes + 3 * BLOCK)
        self.read_total = 0
        self.left = 0  # data bytes of the current member not yet read
        self.pad = 0

    def _read(self, n: int) -> bytes:
        self.read_total += n
        if self.read_total > self.budget:
            raise ArchiveError(f"archive {self.shown} unpacks to more than {self.budget} "
                               f"bytes of tar stream ({ENV_MAX_BYTES}); refusing the archive")
        data = self.stream.read(n)
        if len(data) != n:
            raise ArchiveError(f"archive {self.shown} ends in the middle of a member; it is "
                               f"truncated or corrupt")
        return data

    def data(self) -> Iterator[bytes]:
        """The current member's bytes, in chunks."""
        while self.left:
            chunk = self._read(min(CHUNK, self.left))
            self.left -= len(chunk)
            yield chunk

    def _finish(self) -> None:
        for _ in self.data():
            pass
        if self.pad:
            self._read(self.pad)
            self.pad = 0

    def entries(self, plan: _Plan) -> Iterator[tuple[str, str, int, bool]]:
        """(name, kind, size, executable) of each member; its data is then `data()`."""
        local: dict[str, str] = {}
        long_name: str | None = None
        headers = 0
        while True:
            self._finish()
            try:
                block = self._read(BLOCK)
            except ArchiveError:
                if self.read_total - BLOCK == 0:
                    raise ArchiveError(f"archive {self.shown} is empty or not a tar "
                                       f"archive") from None
                raise
            if block == bytes(BLOCK):
                return  # end of archive: whatever follows is never read
            if not _checksum_ok(block):
                raise ArchiveError(f"archive {self.shown} has a corrupt tar header (or is not "
                                   f"a tar archive); refusing the archive")
            kind = block[156:157]
            try:
                size = _octal(block[124:136])
                mode = _octal(block[100:108])
            except ValueError:
                raise ArchiveError(f"archive {self.shown} has a corrupt tar header; refusing "
                                   f"the archive") from None
            raw = block[0:100].split(b"\x00", 1)[0]
            if block[257:263] == b"ustar\x00":
                prefix = block[345:500].split(b"\x00", 1)[0]
                if prefix:
                    raw = prefix + b"/" + raw
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                name = raw.decode("utf-8", "replace")
                raise plan.refuse(name, "has a name that is not UTF-8") from None
            if kind in self.HEADERS:
                headers += 1
                if size > self.limits.max_header_bytes:
                    raise ArchiveError(
                        f"archive {self.shown}: a {'pax' if kind != b'L' else 'long name'} "
                        f"header of {size} bytes (before member {len(plan.members) + 1}) is "
                        f"over the {self.limits.max_header_bytes} byte limit "
                        f"({ENV_MAX_HEADER_BYTES}); refusing the archive")
                if headers > 2 * self.limits.max_members + 16:
                    raise ArchiveError(f"archive {self.shown} has more than "
                                       f"{2 * self.limits.max_members + 16} extended headers; "
                                       f"refusing the archive")
                self.left, self.pad = size, -size % BLOCK
                body = b"".join(self.data())
                if kind == b"L":
                    long_name = body.split(b"\x00", 1)[0].decode("utf-8", "replace")
                    continue
                records = _pax_records(body, self.shown)
                if any(k.startswith("GNU.sparse") for k in records):
                    raise plan.refuse(records.get("path", name), "is a sparse file")
                if kind == b"g":
                    if {"path", "size", "linkpath"} & set(records):
                        raise ArchiveError(f"archive {self.shown} has a global pax header "
                                           f"that sets names or sizes; refusing the archive")
                    continue
                local.update(records)
                continue
            name = local.get("path", long_name if long_name is not None else name)
            if "size" in local:
                try:
                    size = int(local["size"])
                except ValueError:
                    raise plan.refuse(name, "has a malformed pax size") from None
            local, long_name = {}, None
            if kind in self.REFUSED:
                raise plan.refuse(name, self.REFUSED[kind] + "; only files and folders are "
                                        "allowed in a plugin archive")
            if kind == b"5":
                kind_s = DIR
            elif kind in self.REGULAR:
                kind_s = FILE
            else:
                raise plan.refuse(name, f"has an unknown tar type {kind!r}")
            if size < 0:
                raise plan.refuse(name, "has a negative size")
            self.left, self.pad = size, -size % BLOCK
            if kind_s == DIR:
                self.left = size  # skipped unread by _finish
            yield name, kind_s, size, bool(mode & 0o111)


def _extract_tar(archive: Path, into: Path, limits: Limits, shown: str) -> list[Member]:
    plan = _Plan(limits, shown)
    try:
        # pass 1: every header checked and every byte counted, nothing written
        with _open_tar_stream(archive) as stream:
            reader = _TarReader(stream, limits, shown)
            for name, kind, size, exe in reader.entries(plan):
                plan.add(name, kind, size, exe)
                if kind == FILE:
                    plan.check_size(name, size, size)
        # pass 2: the same stream again, written member by member with a byte budget
        with _open_tar_stream(archive) as stream:
            reader = _TarReader(stream, limits, shown)
            written = _Plan(limits, shown)
            writer = _Writer(into, written)
            for name, kind, size, exe in reader.entries(written):
                member = written.add(name, kind, size, exe)
                if member is None:
                    continue
                if kind == DIR:
                    writer.folder(member)
                else:
                    writer.file(member, reader.data())
        if len(written.members) != len(plan.members):
            raise ArchiveError(f"archive {shown} changed while it was being unpacked")
        return written.members
    except _DECODE_ERRORS as exc:
        raise ArchiveError(f"archive {shown} cannot be unpacked: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None


# ---- zip ---------------------------------------------------------------------------------


def _extract_zip(archive: Path, into: Path, limits: Limits, shown: str) -> list[Member]:
    plan = _Plan(limits, shown)
    try:
        with open(archive, "rb") as f:
            # bound the central directory before zipfile reads it whole
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
            if end is None:
                raise ArchiveError(f"archive {shown} is not a zip archive (no end of central "
                                   f"directory)")
            entries = end[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]
            cd_size = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
            if entries > limits.max_members:
                raise ArchiveError(f"archive {shown} has {entries} members, over the "
                                   f"{limits.max_members} limit ({ENV_MAX_MEMBERS}); refusing "
                                   f"the archive")
            cd_limit = max(entries, 1) * (46 + limits.max_header_bytes)
            if cd_size > cd_limit:
                raise ArchiveError(f"archive {shown} has a {cd_size} byte central directory, "
                                   f"over the {cd_limit} byte limit ({ENV_MAX_HEADER_BYTES} "
                                   f"per member); refusing the archive")
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            members: list[tuple[Member, zipfile.ZipInfo]] = []
            for info in infos:  # pass 1: metadata only, nothing written
                name = info.filename
                if info.flag_bits & 0x1:
                    raise plan.refuse(name, "is encrypted")
                mode = info.external_attr >> 16
                fmt = stat.S_IFMT(mode)
                is_dir = info.is_dir()
                if fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR):
                    what = "a symbolic link" if fmt == stat.S_IFLNK else "a special file"
                    raise plan.refuse(name, f"is {what}; only files and folders are allowed "
                                            f"in a plugin archive")
                if (fmt == stat.S_IFDIR) != is_dir and fmt:
                    raise plan.refuse(name, "says it is both a file and a folder")
                kind = DIR if is_dir else FILE
                member = plan.add(name, kind, 0, bool(mode & 0o111))
                if member is None:
                    continue
                if kind == FILE:  # declared sizes over the limits are refused early
                    plan.check_size(name, info.file_size, info.file_size)
                members.append((member, info))
            written = _Plan(limits, shown)
            writer = _Writer(into, written)
            for member, info in members:  # pass 2: bytes counted as they are written
                if member.kind == DIR:
                    writer.folder(member)
                    continue
                before = written.total
                with zf.open(info) as src:
                    writer.file(member, iter(functools.partial(src.read, CHUNK), b""))
                member.size = written.total - before
            return plan.members
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError,
            EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"archive {shown} cannot be unpacked: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None


__all__ = ["SUFFIXES", "ArchiveError", "Limits", "Member", "clean_name", "extract",
           "is_archive"]
