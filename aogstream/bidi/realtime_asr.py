"""AOG's realtime speech-to-text WebSocket protocol (`speech-to-text-ws`).

Client → server: a `run-task` JSON text frame, binary PCM frames, a `finish-task`
text frame. Server → client: `{"header": {...}, "payload": {...}}` events:
`task-started` (sent here, at once, with the connection's id as task_id), then the
plugin's `result-generated` and `task-finished`, or `task-failed` with CLIENT_ERROR /
SERVER_ERROR / MODEL_ERROR. Unlike AOG, a client mistake (audio before run-task, bad
JSON) gets a `task-failed` event instead of a dropped connection, a plugin failure
gets `task-failed` instead of a bare `{"error"}`, and a client that leaves cancels the
plugin's session at once. After `task-finished` the same socket may run another task.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from aogstream import errors, safejson
from aogstream.bidi.relay import send_frame
from aogstream.bidi.socket import AsgiWebSocket, Disconnected
from aogstream.gateway import Gateway, Route
from aogstream.invocation import Frame, Invocation, Mode
from aogstream.safejson import short, type_name

log = logging.getLogger(__name__)

SERVICE = "speech-to-text-ws"
SAMPLE_RATES = (8000, 16000, 22050, 44100, 48000)
RETURN_FORMATS = ("text", "json", "srt", "vtt")
CLIENT_ERROR = "CLIENT_ERROR"
SERVER_ERROR = "SERVER_ERROR"
MODEL_ERROR = "MODEL_ERROR"
# the most client frames already waiting that are handed to the session together
BURST_FRAMES = 32


def event(name: str, task_id: str, payload: dict[str, Any] | None = None,
          *, error_code: str = "", error_message: str = "") -> str:
    """One server event in AOG's envelope (`action` and `streaming` always present)."""
    header: dict[str, Any] = {"action": "", "streaming": "", "task_id": task_id, "event": name}
    if error_code:
        header["error_code"] = error_code
    if error_message:
        header["error_message"] = error_message
    return json.dumps({"header": header, "payload": payload or {}}, ensure_ascii=False)


class BadTask(ValueError):
    """A run-task the client got wrong (a CLIENT_ERROR); the message names the field."""


def _text_field(obj: dict[str, Any], key: str, where: str) -> None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BadTask(f"'{where}{key}' must be a string, not {type_name(value)}")


def task_parameters(run: dict[str, Any], default_model: str) -> dict[str, str]:
    """The metadata AOG's host adds to the plugin session, with AOG's defaults.

    The run-task goes to the plugin as the client sent it, so its fields are checked
    here first: a wrong type is the client's mistake (BadTask, a CLIENT_ERROR naming the
    field), not a plugin crash reported as SERVER_ERROR."""
    params = run.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadTask("'parameters' must be a JSON object such as "
                      '{"format": "pcm", "sample_rate": 16000, "language": "en"}, not '
                      f"{type_name(params)}")
    _text_field(run, "model", "")
    for key in ("model", "language", "format"):
        _text_field(params, key, "parameters.")
    rate: Any = params.get("sample_rate")
    if rate is None:
        rate = 16000
    elif isinstance(rate, str) and rate.isascii() and rate.isdigit() and len(rate) <= 9:
        rate = int(rate)
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise BadTask("'parameters.sample_rate' must be an integer number of Hz (one of "
                      f"{', '.join(map(str, SAMPLE_RATES))}), not {type_name(rate)}")
    if rate not in SAMPLE_RATES:
        rate = 16000
    return {
        "model": str(run.get("model") or default_model or ""),
        # AOG's host defaults to "zh"; we pass what the client asked and let the
        # plugin apply its own default (an English-only engine would fail on "zh").
        "language": str(params.get("language") or ""),
        "format": str(params.get("format") or "pcm"),
        "sample_rate": str(rate),
    }


class RealtimeSession:
    """One socket: a loop of tasks, each an invocation of the plugin."""

    def __init__(self, ws: AsgiWebSocket, gateway: Gateway, route: Route, conn_id: str,
                 max_frame: int) -> None:
        self.ws = ws
        self.gateway = gateway
        self.route = route
        self.conn_id = conn_id
        self.max_frame = max_frame
        # how the last task failed, if it did: answers a finish-task sent after it
        self.last_failure: tuple[str, str] | None = None

    async def fail(self, code: str, message: str, *, ends_task: bool = False) -> None:
        if ends_task:
            self.last_failure = (code, message)
        await self.ws.send_text(event("task-failed", self.conn_id, error_code=code,
                                      error_message=message))

    async def run(self) -> None:
        try:
            await self._loop()
        except Disconnected:
            return
        except Exception:  # a bug must still tell the client, not close as "normal"
            log.exception("realtime session %s failed", self.conn_id)
            await self.fail(SERVER_ERROR, "the gateway failed on this task; see its log")
            await self.ws.close(1011)

    async def _loop(self) -> None:
        try:
            while True:
                msg = await self.ws.receive()
                run = await self._parse_control(msg)
                if run is None:
                    continue
                action = run.get("action")
                if action == "run-task":
                    await self._run_task(run)
                    if self.ws.closed:
                        return
                elif action == "finish-task" and self.last_failure is not None:
                    # the task this finish-task was meant for had already failed: say
                    # so again, so a client that waits for an answer to finish-task
                    # (as AOG's clients do) is never left waiting
                    code, why = self.last_failure
                    await self.fail(code, f"the task had already failed: {why}",
                                    ends_task=True)
                elif action == "finish-task":
                    await self.fail(CLIENT_ERROR, "finish-task without a running task; "
                                    "send run-task first")
                else:
                    await self.fail(CLIENT_ERROR, f"unknown action {short(action)}; expected "
                                    "run-task or finish-task")
        except Disconnected:
            return

    async def _parse_control(self, msg: str | bytes) -> dict[str, Any] | None:
        if isinstance(msg, bytes):
            if self.last_failure is None:
                await self.fail(CLIENT_ERROR, "audio arrived before run-task; send a "
                                "run-task text frame first")
            # else: the rest of a failed task's audio, already answered by its task-failed
            return None
        try:
            return safejson.loads_object(msg, "the text frame")
        except safejson.JSONInputError as exc:
            await self.fail(CLIENT_ERROR, f"{exc}; text frames must be JSON objects such "
                            'as {"action": "run-task", ...}')
            return None

    async def _run_task(self, run: dict[str, Any]) -> None:
        self.last_failure = None
        try:
            meta = task_parameters(run, self.route.definition.default_model)
        except BadTask as exc:
            await self.fail(CLIENT_ERROR, f"run-task refused: {exc}", ends_task=True)
            return
        named = run.get("model") or (run.get("parameters") or {}).get("model")
        if named:
            # AOG's clients name models the way AOG's catalogue does (with a "/", e.g.
            # an OpenVINO repository name): one that is not installed here is the
            # client's model choice, answered as MODEL_ERROR listing what is installed,
            # never a plugin's "invalid name" reported as SERVER_ERROR
            try:
                self.route = self.gateway.route(self.route.service, {"model": named})
            except errors.GatewayError as exc:
                await self.fail(MODEL_ERROR, exc.message, ends_task=True)
                return
        meta["ws_conn_id"] = self.conn_id
        run["task_id"] = self.conn_id
        run.setdefault("task", SERVICE)
        await self.ws.send_text(event("task-started", self.conn_id))
        finished = False
        async with self.gateway.invoke(self.route, Mode.BIDI, b"", metadata=meta) as inv:
            await inv.send(Frame(json.dumps(run).encode(), "text", meta))
            async with trio.open_nursery() as nursery:
                upstream = trio.CancelScope()
                upstream_done = trio.Event()
                nursery.start_soon(self._upstream, inv, nursery.cancel_scope, upstream,
                                   upstream_done)
                async for frame in inv.frames():
                    if frame.kind == "text" and _event_name(frame.data) in (
                        "task-finished", "task-failed"
                    ):
                        # stop reading the socket first: the client may answer the final
                        # event with its next run-task at once, and that frame belongs
                        # to run(), not to this task's reader
                        upstream.cancel()
                        await upstream_done.wait()
                        await send_frame(self.ws, frame)
                        self.last_failure = _failure_of(frame.data)
                        finished = True
                        break
                    await send_frame(self.ws, frame)
                nursery.cancel_scope.cancel()
            if self.ws.closed:
                return
            if finished:
                # the plugin's task-finished/task-failed was the task's one answer; the
                # call may still end with an error after it (e.g. a finish-task that
                # crossed the plugin's task-failed on the wire), which is no news to
                # the client and must not become a second task-failed
                return
            if inv.error is not None:
                await self.fail(SERVER_ERROR, inv.error.message, ends_task=True)
            else:
                await self.fail(SERVER_ERROR, f"{self.route.provider.name} ended the session "
                                "without task-finished", ends_task=True)

    async def _upstream(self, inv: Invocation, scope: trio.CancelScope,
                        reading: trio.CancelScope, done: trio.Event) -> None:
        try:
            with reading:
                await self._relay_client(inv)
        except Disconnected:
            scope.cancel()
        finally:
            done.set()

    async def _relay_client(self, inv: Invocation) -> None:
        """The client's audio and finish-task, into the running task. Audio frames
        that are already waiting behind one are handed on with it, so that the plugin's
        session may pack them into one message (a lone frame goes at once, alone)."""
        ws = self.ws
        waiting: str | bytes | None = None
        while True:
            if waiting is not None:
                msg, waiting = waiting, None
            else:
                msg = await ws.receive()
            if isinstance(msg, bytes):
                if not msg:
                    await self.fail(CLIENT_ERROR, "empty audio frame ignored")
                    continue
                if len(msg) > self.max_frame:
                    await self.fail(CLIENT_ERROR, f"audio frame of {len(msg)} bytes is "
                                    f"over the {self.max_frame} byte limit")
                    continue
                burst = [Frame(msg, "binary")]
                while len(burst) < BURST_FRAMES:
                    try:
                        nxt = ws.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if isinstance(nxt, bytes) and 0 < len(nxt) <= self.max_frame:
                        burst.append(Frame(nxt, "binary"))
                    else:  # handled on the next turn, in order
                        waiting = nxt
                        break
                if len(burst) == 1:
                    await inv.send(burst[0])
                else:
                    await inv.send_many(burst)
                continue
            ctl = await self._parse_control(msg)
            if ctl is None:
                continue
            action = ctl.get("action")
            if action == "finish-task":
                ctl["task_id"] = self.conn_id
                await inv.send(Frame(json.dumps(ctl).encode(), "text"))
            elif action == "run-task":
                await self.fail(CLIENT_ERROR, "a task is already running on this socket; "
                                "send finish-task first")
            else:
                await self.fail(CLIENT_ERROR, f"unknown action {short(action)}")


def _failure_of(data: bytes) -> tuple[str, str] | None:
    """(error_code, error_message) of a plugin's task-failed event, else None."""
    try:
        header = json.loads(data).get("header", {})
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(header, dict) or header.get("event") != "task-failed":
        return None
    return (str(header.get("error_code") or SERVER_ERROR),
            str(header.get("error_message") or "the task failed"))


def _event_name(data: bytes) -> str:
    if b"task-finished" not in data and b"task-failed" not in data:
        return ""
    try:
        return str(json.loads(data).get("header", {}).get("event", ""))
    except (json.JSONDecodeError, AttributeError):
        return ""


async def serve_realtime(ws: AsgiWebSocket, gateway: Gateway, route: Route, conn_id: str,
                         max_frame: int) -> None:
    await RealtimeSession(ws, gateway, route, conn_id, max_frame).run()
