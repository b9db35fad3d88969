"""Local audio files for AOG's clients: a file path in speech-to-text's `audio`, and
text-to-speech answered with the path of the saved WAV (`{"url": <path>}`).

Why: AOG's SDK README passes `"audio": "<local file path>"` and AOG's built-in engine
reads that file; AOG's text-to-speech saves the WAV and answers its path. Clients
written against AOG do both, so the gateway does too, under these limits:

* only for clients on the loopback interface (127.0.0.0/8, ::1): a caller on this
  machine can read its own files anyway, while a remote caller must never make the
  gateway read (or write) files on its behalf;
* only regular files (`fstat` after an `O_NONBLOCK` open: no devices, FIFOs, sockets or
  directories, and no hanging on a FIFO), opened with the gateway user's rights;
* at most `local_audio_max_bytes` (16 MiB by default);
* audio only: the first bytes must be a WAV, MP3, FLAC, Ogg, MP4/M4A or WebM header, or
  the name must end in `.pcm`/`.raw` (raw PCM has no header), so the gateway never
  forwards, say, a key file to a plugin;
* the answers name no path but the one the client gave (and the saved WAV's);
* `AOGSTREAM_LOCAL_AUDIO_PATHS=0` turns both off (`audio` must then be base64).

A string that is not a path (base64, a data: URI) passes unchanged, as before; a
base64 string that happens to start with "/" (MP3 frames do) is a path only if such
a file exists.

Saved WAVs go to `<data dir>/audio/`; only the newest `KEEP_SAVED` are kept, so the
folder does not grow without bound.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import stat
import uuid
from pathlib import Path

import trio

from aogstream import errors
from aogstream.asgi_types import Scope
from aogstream.engines.pcm import is_wav

AUDIO_SERVICE, SPEECH_SERVICE = "speech-to-text", "text-to-speech"
RAW_SUFFIXES = (".pcm", ".raw")
KEEP_SAVED = 100
MAX_PATH_CHARS = 4096


def is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


def _looks_like_path(value: str) -> bool:
    return 0 < len(value) <= MAX_PATH_CHARS and "\n" not in value and \
        value.startswith(("/", "~", "./", "../"))


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode("".join(value.split()), validate=True)
        return True
    except (binascii.Error, ValueError):
        return False


def is_audio(head: bytes, name: str) -> bool:
    """Whether a file's first bytes (or, for headerless PCM, its name) say audio."""
    return is_wav(head) or head[:3] == b"ID3" \
        or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0) \
        or head[:4] in (b"fLaC", b"OggS", b"\x1a\x45\xdf\xa3") or head[4:8] == b"ftyp" \
        or name.lower().endswith(RAW_SUFFIXES)


def _bad(message: str) -> errors.GatewayError:
    return errors.GatewayError(errors.BAD_REQUEST, message)


def read_audio_file(path: str, max_bytes: int) -> bytes:
    """The bytes of the audio file at `path`, or a 400 saying which limit it breaks."""
    full = os.path.expanduser(path)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _bad("'audio' names a file that does not exist") from None
    except PermissionError:
        raise _bad("'audio' names a file the gateway may not read (check its "
                   "permissions)") from None
    except OSError as exc:
        raise _bad(f"'audio' names a file that cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _bad("'audio' must name a regular audio file, not a directory, device, "
                       "FIFO or socket")
        if st.st_size > max_bytes:
            raise _bad(f"the file named in 'audio' is {st.st_size} bytes; at most "
                       f"{max_bytes} are read from a path (send a shorter recording)")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _bad(f"the file named in 'audio' grew past {max_bytes} bytes while read")
    if not data:
        raise _bad("the file named in 'audio' is empty")
    if not is_audio(data[:16], full):
        raise _bad("the file named in 'audio' is not audio (WAV, MP3, FLAC, Ogg, M4A or "
                   "WebM; raw PCM files must end in .pcm or .raw)")
    return data


async def inline_audio_path(scope: Scope, obj: dict[str, object], enabled: bool,
                            max_bytes: int) -> bool:
    """Replace a file path in `obj["audio"]` by the file's bytes in base64 (True when
    it did). A path from a non-loopback client, or with the setting off, is a 400."""
    audio = obj.get("audio")
    if not isinstance(audio, str) or not _looks_like_path(audio):
        return False
    exists = os.path.lexists(os.path.expanduser(audio))
    if not exists and _is_base64(audio):
        return False  # base64 that starts with "/"
    if not enabled:
        raise _bad("'audio' must be base64 audio: reading local files is turned off on "
                   "this gateway (AOGSTREAM_LOCAL_AUDIO_PATHS=0)")
    if not is_loopback(scope):
        raise _bad("'audio' must be base64 audio: only clients on this machine (loopback) "
                   "may name a local file")
    data = await trio.to_thread.run_sync(read_audio_file, audio, max_bytes)
    obj["audio"] = base64.b64encode(data).decode()
    return True


def wants_saved_wav(scope: Scope, obj: dict[str, object], enabled: bool) -> bool:
    """AOG's SDK asks `{text, voice?, model?}` and gets `{"url": <saved wav>}`: a loopback
    request in that form (no `response_format`, no `stream`) gets the path added."""
    return enabled and is_loopback(scope) and "response_format" not in obj \
        and obj.get("stream") is not True


def _save(folder: Path, wav: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"tts-{uuid.uuid4().hex}.wav"
    tmp = target.with_suffix(".part")
    tmp.write_bytes(wav)
    tmp.replace(target)
    saved = sorted(folder.glob("tts-*.wav"), key=lambda p: p.stat().st_mtime)
    for old in saved[:-KEEP_SAVED]:
        old.unlink(missing_ok=True)
    return target


async def add_saved_wav(data: bytes, folder: Path) -> bytes:
    """A JSON text-to-speech answer with its base64 `audio` also saved as a WAV and the
    file's path in `url` (AOG's answer shape, the inline fields kept)."""
    if data[:1] != b"{":
        return data
    try:
        body = json.loads(data)
        audio = base64.b64decode(body["audio"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return data
    if audio[:4] != b"RIFF":
        return data
    path = await trio.to_thread.run_sync(_save, folder, audio)
    body["url"] = str(path)
    return json.dumps(body).encode()
