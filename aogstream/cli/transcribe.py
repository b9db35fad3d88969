"""`aogstream transcribe`: speech to text from a whole file, or realtime from a recording
played into the gateway's realtime socket as a microphone would (`--mic-file`).

websockets is imported only for the realtime socket, so the other commands start quickly.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import httpx

from aogstream.cli.client import BASE, EXIT_INTERRUPTED, Api, CliError, error_message, not_running
from aogstream.cli.output import dump_json
from aogstream.engines import pcm

if TYPE_CHECKING:  # imported for real only by the realtime command (see the docstring)
    from websockets.sync.client import ClientConnection

FRAME_MS = 20
RATE = 16000


def cmd_transcribe(api: Api, args: argparse.Namespace) -> int:
    """A whole file through `speech-to-text`, or a recording played into the realtime
    socket as a microphone would (`--mic-file`)."""
    if args.mic_file:
        return _transcribe_realtime(api, args)
    if not args.file:
        raise CliError("transcribe needs an audio file (or --mic-file <raw PCM16 16 kHz>)", 2)
    try:
        audio = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read audio file {args.file}: {exc.strerror or exc}", 2) from exc
    body: dict[str, str | int] = {"audio": base64.b64encode(audio).decode()}
    if Path(args.file).suffix.lower() in (".raw", ".pcm"):
        body.update({"format": "pcm", "sample_rate": args.rate})
    if args.language:
        body["language"] = args.language
    if args.model:
        body["model"] = args.model
    try:
        resp = api.http.post(f"{BASE}/services/speech-to-text", json=body,
                             timeout=httpx.Timeout(600.0, connect=5.0))
    except httpx.ConnectError as exc:
        raise not_running(api.url) from exc
    if resp.status_code >= 400:
        raise CliError(f"error: {error_message(resp)}")
    result = resp.json()
    if args.json:
        dump_json(result)
    else:
        print(str(result.get("text", "")).strip())
    return 0


class _Captions:
    """Realtime results on a terminal: the current partial redrawn on one line, each
    final sentence on a line of its own."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.clear = "\r\x1b[K" if out.isatty() else "\r"
        self.partial = False

    def show(self, text: str, final: bool) -> None:
        if final:
            self.out.write(f"{self.clear if self.partial else ''}{text}\n")
            self.partial = False
        else:
            self.out.write(f"{self.clear}{text}")
            self.partial = True
        self.out.flush()

    def end(self) -> None:
        if self.partial:
            self.out.write("\n")
            self.out.flush()
            self.partial = False


def mic_pcm(path: str) -> bytes:
    """The file for `--mic-file` as PCM16 16 kHz mono: a WAV's header is read and its
    audio resampled (first channel); anything else must already be raw PCM16 16 kHz."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", 2) from exc
    if pcm.is_wav(data):
        try:
            samples, rate = pcm.wav_to_mono_pcm16(data)
        except pcm.WavError:
            raise CliError(f"{path} is not a readable 16-bit PCM WAV; --mic-file takes "
                           "16-bit PCM (convert it, e.g. `sox in.wav -b 16 out.wav`)",
                           2) from None
        return pcm.resample(samples, rate, RATE)
    if data[:4] in (b"fLaC", b"OggS") or data[:3] == b"ID3":
        raise CliError(f"{path} is compressed audio; --mic-file takes a WAV or raw PCM16 "
                       f"{RATE} Hz mono (or transcribe it without --mic-file)", 2)
    return data


def _transcribe_realtime(api: Api, args: argparse.Namespace) -> int:
    """Play a raw PCM16 16 kHz file into the realtime socket in 20 ms frames, paced like
    a microphone, while a reader thread prints the results as they come."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    pcm = mic_pcm(args.mic_file)
    ws_url = "ws" + api.url[len("http"):] + f"{BASE}/services/speech-to-text-ws"
    run = {"task": "speech-to-text-ws", "action": "run-task",
           "parameters": {"format": "pcm", "sample_rate": RATE,
                          "language": args.language or "en"}}
    if args.model:
        run["model"] = args.model
    captions = _Captions(sys.stdout)
    failure: list[str] = []
    finished = threading.Event()

    def reader(ws: ClientConnection) -> None:
        try:
            while True:
                raw = ws.recv(timeout=120)
                if isinstance(raw, bytes):
                    continue
                ev = json.loads(raw)
                if "error" in ev and "header" not in ev:
                    failure.append(str(ev["error"]))
                    return
                header, payload = ev.get("header") or {}, ev.get("payload") or {}
                kind = header.get("event")
                if kind == "result-generated":
                    sent = (payload.get("output") or {}).get("sentence") or {}
                    text = str(sent.get("text", "")).strip()
                    if text:
                        captions.show(text, sent.get("sentence_end", True) is not False)
                elif kind == "task-failed":
                    failure.append(f"{header.get('error_code', 'error')}: "
                                   f"{header.get('error_message', '')}")
                    return
                elif kind == "task-finished":
                    return
        except (ConnectionClosed, TimeoutError, ValueError) as exc:
            failure.append(f"the realtime socket ended early: {exc}")
        finally:
            finished.set()

    try:
        with connect(ws_url, open_timeout=10, max_size=None,
                     additional_headers=api.headers) as ws:
            ws.send(json.dumps(run))
            first = json.loads(ws.recv(timeout=30))
            header = first.get("header") or {}
            if header.get("event") != "task-started":
                msg = first.get("error") or header.get("error_message") or json.dumps(first)
                raise CliError(f"error: {msg}")
            thread = threading.Thread(target=reader, args=(ws,), daemon=True)
            thread.start()
            size = RATE * FRAME_MS // 1000 * 2
            t0 = time.monotonic()
            for i in range(0, len(pcm), size):
                if finished.is_set():
                    break
                ws.send(pcm[i:i + size])
                if args.pace > 0:
                    wait = t0 + (i // size + 1) * FRAME_MS / 1000 / args.pace - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
            if not finished.is_set():
                ws.send(json.dumps({"task": "speech-to-text-ws", "action": "finish-task"}))
            if not finished.wait(120):
                failure.append("no task-finished within 120 s of the end of the audio")
    except KeyboardInterrupt:
        captions.end()
        return EXIT_INTERRUPTED
    except InvalidStatus as exc:
        body = exc.response.body or b""
        try:
            msg = json.loads(body).get("message") or body.decode(errors="replace")
        except ValueError:
            msg = body.decode(errors="replace") or f"HTTP {exc.response.status_code}"
        raise CliError(f"error: {msg}") from exc
    except (OSError, WebSocketException) as exc:
        if isinstance(exc, ConnectionRefusedError):
            raise not_running(api.url) from exc
        raise CliError(f"realtime socket failed: {exc}") from exc
    captions.end()
    if failure:
        raise CliError(f"error: {failure[0]}")
    return 0
