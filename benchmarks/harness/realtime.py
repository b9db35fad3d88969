"""AOG's realtime speech protocol as the realtime stub (benchmarks/realtime_plugin)
answers it, and the two realtime systems as harness `System`s.

- `run_task(...)`, `FINISH_TASK`, `frame_seq(text)`, `event_name(text)`: the frames a
  client sends and the cheap readings of the stub's answers.
- `start_direct_ws` (the direct WebSocket baseline, realtime_plugin/direct_ws.py),
  `start_realtime_floor` (floor_app.py's WebSocket side: the bare ASGI floor on
  hypercorn's trio worker) and `start_realtime_gateway` (the gateway with the realtime
  stub plugin): handed to a `Bench` with `Bench.adopt`, so it measures, reports and
  stops them like its own.
- `read_events`: the JSON lines the stubs record.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from .layout import HERE
from .processes import free_port, popen
from .systems import System, start_aogstream, start_floor, stop, wait_listening

REALTIME_PLUGIN_DIR = HERE / "realtime_plugin"
REALTIME_PLUGIN = "realtime-plugin"
REALTIME_PATH = "/aog/v0.2/services/speech-to-text-ws"

FINISH_TASK = json.dumps({"task": "speech-to-text-ws", "action": "finish-task"})


def run_task(first_delay: float = 0.0) -> str:
    """A run-task for 16 kHz PCM16 mono; `first_delay` holds the stub's first answer."""
    params: dict[str, object] = {"format": "pcm", "sample_rate": 16000, "language": "en"}
    if first_delay:
        params["first_delay"] = first_delay
    return json.dumps({"task": "speech-to-text-ws", "action": "run-task",
                       "model": "stub-asr", "parameters": params})


_FRAME_MARK = '"text":"frame '


def frame_seq(text: str) -> int:
    """The sequence number a `result-generated` partial of the stub names, or -1."""
    i = text.find(_FRAME_MARK)
    if i < 0:
        return -1
    j = i + len(_FRAME_MARK)
    return int(text[j:text.index('"', j)])


def event_name(text: str) -> str:
    """A server event's `header.event`, cheaply (the stub's events, AOG's envelope)."""
    i = text.find('"event":')
    if i < 0:
        return ""
    j = text.index('"', i + 8)
    return text[j + 1:text.index('"', j + 1)]


def start_direct_ws(tmp: Path, events: Path | None = None, name: str = "direct") -> System:
    """The realtime direct baseline (realtime_plugin/direct_ws.py) as a harness System,
    measured like any other (its one process)."""
    port = free_port()
    log = tmp / f"{name}.log"
    argv = [sys.executable, str(REALTIME_PLUGIN_DIR / "direct_ws.py"), "--port", str(port)]
    if events is not None:
        argv += ["--events", str(events)]
    sut = System(name, popen(argv, log), port, log, paths={"ws": REALTIME_PATH})
    try:
        wait_listening(sut, "direct_ws.py")
        sut.roles = {sut.proc.pid: "direct ws server"}
    except BaseException:
        stop(sut)
        raise
    return sut


def start_realtime_floor(tmp: Path, name: str = "floor") -> System:
    """benchmarks/floor_app.py serving the realtime path: the same process and hypercorn
    configuration as the HTTP floor (`start_floor`), measured through its WebSocket side
    (what hypercorn's trio worker + ASGI WebSocket handling cost per frame)."""
    sut = start_floor(tmp, name=name)
    sut.paths = {"ws": REALTIME_PATH}
    return sut


def start_realtime_gateway(tmp: Path, stub: System, events: Path | None = None,
                           workers: int | None = None, name: str = "aogstream") -> System:
    """The gateway with the realtime stub plugin (benchmarks/realtime_plugin). The plugin
    inherits the gateway's environment, which is how it learns where to record its
    events."""
    if events is not None:
        os.environ["REALTIME_PLUGIN_EVENTS"] = str(events)
    # the benchmark opens up to hundreds of sessions of a stub that holds nothing: the
    # per-process session cap (sized for real decoders) must not refuse them
    os.environ["AOGSTREAM_MAX_REALTIME_SESSIONS"] = "0"
    try:
        sut = start_aogstream(tmp, stub, name=name, plugin_dir=REALTIME_PLUGIN_DIR,
                              plugin_name=REALTIME_PLUGIN, workers=workers)
    finally:
        os.environ.pop("REALTIME_PLUGIN_EVENTS", None)
        os.environ.pop("AOGSTREAM_MAX_REALTIME_SESSIONS", None)
    sut.paths = {"ws": REALTIME_PATH}
    return sut


def read_events(path: Path) -> list[dict[str, object]]:
    """The JSON lines a realtime stub (plugin or direct) recorded; [] if none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out
