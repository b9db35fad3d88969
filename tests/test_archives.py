"""Plugin archives are unpacked safely: hostile archives are refused before any byte is
written, and nothing lands outside a temporary folder.

Real: the archives are real tar/gzip/zip files built here byte for byte (including the
symlink-chain layout of CVE-2025-4517's public proof of concept, a pax header of tens of
MB inside a small gzip and a 1 MB zip that expands to 1 GiB), unpacked by
`aogstream.management.archives` onto the real file system; the end-to-end tests install
a real plugin archive through a real gateway's `POST /plugin/install` and see its plugin
process running. Proven: every hostile layout is refused with a message naming the
member and the rule or limit; the target folder is gone afterwards and nothing new
exists beside it or at the paths the archives aim at; the pax bomb is refused with a
bounded memory peak; valid .tar.gz and .zip plugins still install and run.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import PLUGIN_DIR, Gateway

from aogstream.management.archives import ArchiveError, Limits, clean_name, extract

API = "/aog/v0.2"
ECHO = PLUGIN_DIR / "echo-plugin"


# ---- helpers -----------------------------------------------------------------------------


def snapshot(root: Path) -> set[str]:
    """Every path under `root` (links not followed)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def add_file(tf: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tf.addfile(info, io.BytesIO(data))


def add_special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tf.addfile(info)


def tar_gz(path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    return path


def refused(archive: Path, work: Path, *words: str, limits: Limits | None = None) -> str:
    """Unpack `archive` into `work/staging/unpacked`; it must be refused, leaving nothing."""
    staging = work / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    before = snapshot(work.parent)
    with pytest.raises(ArchiveError) as info:
        extract(archive, staging / "unpacked", limits)
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)
    assert not (staging / "unpacked").exists()
    assert snapshot(work.parent) == before, snapshot(work.parent) ^ before
    assert str(work) not in message  # no server path in the answer
    return message


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """tmp/data/plugins: the data dir's plugin folder; archives sit in tmp/in."""
    (tmp_path / "in").mkdir()
    w = tmp_path / "data" / "plugins"
    w.mkdir(parents=True)
    return w


# ---- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "a/../../b", "..", "C:/x", "a\\b", "a\x00b",
                                  "x/" * 40 + "f", "a" * 300])
def test_unsafe_member_names_are_refused(name):
    with pytest.raises(ValueError):
        clean_name(name)


def test_plain_member_names_are_kept():
    assert clean_name("./p/bin//run") == ("p", "bin", "run")
    assert clean_name("./") == ()


# ---- hostile tar archives ----------------------------------------------------------------


def test_cve_2025_4517_symlink_chain_is_refused_before_writing(work, tmp_path):
    """The proof of concept's layout: a chain of 247-character folders, each with a
    one-letter symlink to it, a symlink whose resolved path overflows PATH_MAX, then a
    link and a file through it aimed outside (here at tmp/outside)."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"

    def build(tf: tarfile.TarFile) -> None:
        add_file(tf, "plugin/plugin.yaml", b"version: '1.0'\n")
        path = ""
        for step in steps:
            add_special(tf, os.path.join(path, comp), tarfile.DIRTYPE)
            add_special(tf, os.path.join(path, step), tarfile.SYMTYPE, comp)
            path = os.path.join(path, comp)
        linkpath = os.path.join(*steps, "l" * 254)
        add_special(tf, linkpath, tarfile.SYMTYPE, "../" * len(steps))
        add_special(tf, "escape", tarfile.SYMTYPE,
                    linkpath + "/" + "../" * 3 + "outside")
        add_special(tf, "escape/flag", tarfile.LNKTYPE, "/etc/passwd")
        add_file(tf, "escape/written", b"pwned")

    archive = tar_gz(tmp_path / "in" / "cve.tar.gz", build)
    msg = refused(archive, work, "cve.tar.gz", "'a'", "symbolic link")
    assert "only files and folders" in msg
    assert not (tmp_path / "outside").exists()


def test_absolute_and_dotdot_names_are_refused(work, tmp_path):
    target = tmp_path / "abs-target"
    a = tar_gz(tmp_path / "in" / "abs.tar.gz", lambda tf: (
        add_file(tf, "plugin/plugin.yaml"), add_file(tf, str(target))))
    refused(a, work, str(target), "absolute path")
    assert not target.exists()
    b = tar_gz(tmp_path / "in" / "dots.tar.gz", lambda tf: (
        add_file(tf, "plugin/plugin.yaml"), add_file(tf, "plugin/../../../escaped.txt")))
    refused(b, work, "plugin/../../../escaped.txt", "'..'", "outside")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (work.parent / "escaped.txt").exists()


def test_a_file_through_a_symlink_is_refused(work, tmp_path):
    outside = tmp_path / "outside"
    archive = tar_gz(tmp_path / "in" / "link.tar.gz", lambda tf: (
        add_file(tf, "plugin/plugin.yaml"),
        add_special(tf, "plugin/link", tarfile.SYMTYPE, str(outside)),
        add_file(tf, "plugin/link/evil.sh", b"#!/bin/sh\n", 0o755)))
    refused(archive, work, "plugin/link", "symbolic link")
    assert not outside.exists()


@pytest.mark.parametrize(("kind", "words"), [
    (tarfile.LNKTYPE, ["hard link"]),
    (tarfile.CHRTYPE, ["character device"]),
    (tarfile.BLKTYPE, ["block device"]),
    (tarfile.FIFOTYPE, ["fifo"]),
], ids=["hardlink-to-etc-passwd", "char-device", "block-device", "fifo"])
def test_links_devices_and_fifos_are_refused(work, tmp_path, kind, words):
    archive = tar_gz(tmp_path / "in" / "special.tar.gz", lambda tf: (
        add_file(tf, "plugin/plugin.yaml"),
        add_special(tf, "plugin/passwd", kind, "/etc/passwd" if kind == tarfile.LNKTYPE
                    else "")))
    refused(archive, work, "plugin/passwd", *words)


def test_duplicate_names_and_file_folder_clashes_are_refused(work, tmp_path):
    dup = tar_gz(tmp_path / "in" / "dup.tar.gz", lambda tf: (
        add_file(tf, "plugin/plugin.yaml", b"a"), add_file(tf, "plugin/plugin.yaml", b"b")))
    refused(dup, work, "plugin/plugin.yaml", "twice")
    clash = tar_gz(tmp_path / "in" / "clash.tar.gz", lambda tf: (
        add_file(tf, "plugin/bin"), add_file(tf, "plugin/bin/run")))
    refused(clash, work, "plugin/bin/run", "is a file")
    late = tar_gz(tmp_path / "in" / "late.tar.gz", lambda tf: (
        add_file(tf, "plugin/bin/run"), add_file(tf, "plugin/bin")))
    refused(late, work, "plugin/bin", "other members use it as a folder")


def test_a_huge_pax_header_in_a_small_gzip_is_refused_with_bounded_memory(work, tmp_path):
    """40 MB of pax header compress to ~40 KB; tarfile would read it whole while merely
    listing members. It is refused from its 512-byte header, before its body is read."""
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("plugin/plugin.yaml")
        info.pax_headers = {"comment": "A" * (40 << 20)}
        tf.addfile(info, io.BytesIO(b""))
    archive = tmp_path / "in" / "pax.tar.gz"
    archive.write_bytes(gzip.compress(body.getvalue(), 9))
    del body
    assert archive.stat().st_size < 300_000
    tracemalloc.start()
    try:
        refused(archive, work, "pax.tar.gz", "pax", "header", "65536 byte limit",
                "AOGSTREAM_ARCHIVE_MAX_HEADER_BYTES")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes while refusing a pax bomb"


def test_too_many_members_are_refused(work, tmp_path):
    def build(tf: tarfile.TarFile) -> None:
        add_file(tf, "plugin/plugin.yaml")
        for i in range(60):
            add_file(tf, f"plugin/f{i}")

    archive = tar_gz(tmp_path / "in" / "many.tar.gz", build)
    refused(archive, work, "more than 50 members", "AOGSTREAM_ARCHIVE_MAX_MEMBERS",
            limits=Limits(max_members=50))


def test_a_tar_that_unpacks_past_the_total_is_refused_before_writing(work, tmp_path):
    """Counted from the real decompressed bytes in the checking pass: nothing written."""
    def build(tf: tarfile.TarFile) -> None:
        for i in range(3):
            add_file(tf, f"plugin/zeros{i}", bytes(4 << 20))

    archive = tar_gz(tmp_path / "in" / "big.tar.gz", build)
    refused(archive, work, "more than 10485760 bytes", "AOGSTREAM_ARCHIVE_MAX_BYTES",
            "plugin/zeros2", limits=Limits(max_bytes=10 << 20))


# ---- hostile zip archives ----------------------------------------------------------------


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1 MB of zip whose one member expands to 1 GiB of zeros."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("plugin/plugin.yaml", "version: '1.0'\n")
        with zf.open("plugin/big.bin", "w") as f:
            zeros = bytes(1 << 20)
            for _ in range(1024):
                f.write(zeros)
    assert path.stat().st_size < 1_100_000
    return path


def test_a_zip_bomb_is_refused_by_the_default_limits(work, zip_bomb):
    refused(zip_bomb, work, "bomb.zip", "plugin/big.bin", "536870912 bytes",
            "AOGSTREAM_ARCHIVE_MAX_MEMBER_BYTES", limits=Limits())


def test_a_zip_bomb_that_lies_about_its_size_is_refused(work, tmp_path, zip_bomb):
    """The member's sizes in both headers say 1,000 bytes: the bytes actually unpacked
    decide, and the partial file is removed with everything else."""
    data = bytearray(zip_bomb.read_bytes())
    with zipfile.ZipFile(zip_bomb) as zf:
        info = zf.getinfo("plugin/big.bin")
    local = info.header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    data[local + 22:local + 26] = (1000).to_bytes(4, "little")
    central = data.rfind(b"PK\x01\x02")
    assert data[central + 46:central + 46 + len(info.filename)] == info.filename.encode()
    data[central + 24:central + 28] = (1000).to_bytes(4, "little")
    liar = tmp_path / "in" / "liar.zip"
    liar.write_bytes(bytes(data))
    refused(liar, work, "liar.zip", "cannot be unpacked")


def test_zip_symlinks_devices_and_absolute_names_are_refused(work, tmp_path):
    link = zipfile.ZipInfo("plugin/link")
    link.create_system = 3
    link.external_attr = (0o120777) << 16
    fifo = zipfile.ZipInfo("plugin/fifo")
    fifo.create_system = 3
    fifo.external_attr = (0o010644) << 16
    for info, words in [(link, ["plugin/link", "symbolic link"]),
                        (fifo, ["plugin/fifo", "special file"]),
                        (zipfile.ZipInfo("/abs/evil"), ["absolute"]),
                        (zipfile.ZipInfo("plugin/../../evil"), ["'..'"])]:
        path = tmp_path / "in" / "bad.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("plugin/plugin.yaml", "x")
            zf.writestr(info, "/etc/passwd")
        refused(path, work, *words)


def test_a_zip_with_too_many_members_is_refused_from_its_directory(work, tmp_path):
    path = tmp_path / "in" / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(60):
            zf.writestr(f"plugin/f{i}", "")
    refused(path, work, "60 members", "50 limit", limits=Limits(max_members=50))


# ---- valid archives ----------------------------------------------------------------------


def test_a_valid_tar_and_zip_unpack_with_their_executable_bits(work, tmp_path):
    src = tmp_path / "src" / "echo-plugin"
    shutil.copytree(ECHO, src, ignore=shutil.ignore_patterns("__pycache__"))
    tgz = tmp_path / "in" / "ok.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(src, arcname=".")
    zpath = tmp_path / "in" / "ok.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, f"echo-plugin/{p.relative_to(src)}")
    for archive, root in [(tgz, work / "t"), (zpath, work / "z")]:
        members = extract(archive, root)
        base = root if archive is tgz else root / "echo-plugin"
        assert (base / "plugin.yaml").read_bytes() == (src / "plugin.yaml").read_bytes()
        assert os.access(base / "bin" / "echo-plugin", os.X_OK)
        assert not os.access(base / "plugin.yaml", os.X_OK)
        assert sum(m.size for m in members) == sum(
            p.stat().st_size for p in src.rglob("*") if p.is_file())


# ---- end to end: the gateway's install route ---------------------------------------------


def install(gw: Gateway, path: Path) -> httpx.Response:
    return httpx.post(f"{gw.url}{API}/plugin/install", json={"path": str(path)}, timeout=60)


def plugin_archive(tmp: Path, name: str, fmt: str) -> Path:
    src = tmp / "src" / name
    shutil.copytree(ECHO, src, ignore=shutil.ignore_patterns("__pycache__"))
    text = (src / "plugin.yaml").read_text().replace("name: echo-plugin", f"name: {name}", 1)
    (src / "plugin.yaml").write_text(text)
    if fmt == "zip":
        path = tmp / f"{name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(src.rglob("*")):
                zf.write(p, f"{name}/{p.relative_to(src)}")
        return path
    path = tmp / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname=name)
    return path


@pytest.fixture(scope="module")
def gw(gateway_factory: Any) -> Gateway:
    return gateway_factory("archives")


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_a_plugin_archive_installs_through_the_gateway_and_runs(gw, tmp_path, fmt):
    name = f"arch-{fmt.replace('.', '')}-plugin"
    r = install(gw, plugin_archive(tmp_path, name, fmt))
    assert r.status_code == 200, r.text
    p = r.json()["data"]
    assert (p["name"], p["state"], p["enabled"]) == (name, "running", True)
    os.kill(p["pid"], 0)  # the plugin process is alive
    installed = gw.workdir / "data" / "plugins"
    assert (installed / name / "plugin.yaml").is_file()
    assert not [q for q in installed.iterdir() if q.name.startswith(".installing-")]
    r = httpx.request("DELETE", f"{gw.url}{API}/plugin/delete", json={"name": name},
                      timeout=30)
    assert r.status_code == 200, r.text


def test_a_hostile_archive_is_refused_by_the_gateway_leaving_nothing(gw, tmp_path):
    data = gw.workdir / "data"
    (data / "plugins").mkdir(parents=True, exist_ok=True)
    before = snapshot(data / "plugins")
    src = plugin_archive(tmp_path, "evil-plugin", "tar.gz")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(src) as tf_in, tarfile.open(evil, "w:gz") as tf:
        for mem in tf_in.getmembers():
            tf.addfile(mem, tf_in.extractfile(mem) if mem.isfile() else None)
        add_special(tf, "evil-plugin/out", tarfile.SYMTYPE, str(tmp_path / "outside"))
        add_file(tf, "evil-plugin/out/pwned", b"x")
    r = install(gw, evil)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["business_code"] == 100004
    assert "evil-plugin/out" in body["message"] and "symbolic link" in body["message"]
    assert str(data) not in body["message"]
    assert snapshot(data / "plugins") == before
    assert not (data / "evil-plugin").exists()
    assert not (tmp_path / "outside").exists()


def test_a_pax_bomb_sent_to_the_gateway_is_refused_without_growing_it(gw, tmp_path):
    """The issue's reproduction: a small .tar.gz whose pax header is hundreds of MB took
    the gateway from 82 to 1,094 MB. Now it is refused from the header's size."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("bomb-plugin/plugin.yaml")
        info.pax_headers = {"comment": "A" * (256 << 20)}
        tf.addfile(info, io.BytesIO(b""))
    archive = tmp_path / "bomb-plugin.tar.gz"
    archive.write_bytes(gzip.compress(raw.getvalue(), 9))
    del raw
    assert archive.stat().st_size < 1 << 20
    assert gw.proc is not None
    gateway = psutil.Process(gw.proc.pid)
    before = gateway.memory_info().rss
    r = install(gw, archive)
    assert r.status_code == 400, r.text
    assert "AOGSTREAM_ARCHIVE_MAX_HEADER_BYTES" in r.json()["message"]
    grown = gateway.memory_info().rss - before
    assert grown < 32 << 20, f"the gateway grew by {grown >> 20} MB"
