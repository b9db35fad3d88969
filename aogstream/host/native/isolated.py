"""`isolation: process`: a native plugin's library in a small host process of ours.

CPA trusts in-process code blindly: a NULL dereference in a plugin kills the gateway.
A plugin configured with `plugins.configs.<id>.isolation: process` is instead loaded by
`python -m aogstream.host.native.isolated`, which dlopens it with the very same `abi`
code, and the gateway talks to that process over a socketpair (no TCP port) in
length-prefixed frames, both ways:

- host → plugin calls (`CALL`: id, method, request bytes → `RESULT`: id, status,
  reply bytes); many in flight at once, matched by id; each runs on a thread of the
  child, so a slow call never holds up another;
- plugin → host callbacks (`HOSTCALL` from whatever plugin thread made it →
  `HOSTREPLY`), answered in the gateway by the existing dispatcher (`on_host_call`,
  i.e. `callbacks.HostServices.handle`) on a thread of ours, so behaviour is the same
  as in process: `host.stream.emit` still blocks the plugin's thread while 16 chunks
  wait (the child's thread waits for the reply, the gateway's thread waits in the
  queue), and callbacks may re-enter from any plugin thread.

`IsolatedLibrary` is what `NativePlugin` holds in place of an `abi.NativeLibrary`:
the same blocking `open`/`call`/`shutdown`/`idle`, so nothing above it knows. When
the process dies (a crash in native code, an abort, a kill), every call in flight
fails at once with `abi.Crashed` and `on_exit` tells the plugin, which ends its open
streams and restarts the process with back-off (`plugin.NativePlugin`).

No orphans: the child exits when its end of the socketpair reports EOF (the gateway
is gone, however it died), and also asks the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG). That signal follows the *thread* that spawned the child, so the
gateway spawns it from the trio loop's thread (`spawn`), never from a worker thread
that may end first.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from aogstream.host.native.abi import CallError, Crashed, LoadError, NativeLibrary
from aogstream.host.native.gojson import failure

log = logging.getLogger("aogstream.native")

# frame kinds
CALL, RESULT, HOSTCALL, HOSTREPLY, OPEN, SHUTDOWN = 1, 2, 3, 4, 5, 6
# RESULT statuses
OK, CALL_ERROR, LOAD_ERROR = 0, 1, 2
_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<BQiH")  # kind, id, status, method length
MAX_FRAME = 512 * 1024 * 1024
MAX_THREADS = 512  # threads a side keeps for calls and callbacks that block
OPEN_TIMEOUT = 30.0
EXIT_GRACE = 5.0  # after shutdown, how long the child has to exit before it is killed
PR_SET_PDEATHSIG = 1


class ConnectionGone(Exception):
    """The other end of the socket closed."""


class Channel:
    """Frames over one stream socket: `send` from any thread, `recv` from one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        # buffered: a burst of small frames (stream chunks) is one system call
        self._rfile = sock.makefile("rb", buffering=256 * 1024)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._rfile.close()
        self.sock.close()

    def send(self, kind: int, ident: int, status: int = 0, method: str = "",
             data: bytes = b"") -> bool:
        """False when the other end is gone (the caller's answer then goes nowhere)."""
        name = method.encode("utf-8")
        head = _HEAD.pack(kind, ident, status, len(name))
        size = len(head) + len(name) + len(data)
        try:
            with self._send_lock:
                self.sock.sendall(b"".join((_LEN.pack(size), head, name, data)))
        except OSError:
            return False
        return True

    def recv(self) -> tuple[int, int, int, str, bytes]:
        (size,) = _LEN.unpack(self._exact(_LEN.size))
        if size < _HEAD.size or size > MAX_FRAME:
            raise ConnectionGone(f"a frame of {size} bytes")
        body = self._exact(size)
        kind, ident, status, mlen = _HEAD.unpack_from(body)
        start = _HEAD.size
        method = body[start:start + mlen].decode("utf-8", "replace")
        return kind, ident, status, method, body[start + mlen:]

    def _exact(self, n: int) -> bytes:
        try:
            data: bytes = self._rfile.read(n)
        except (OSError, ValueError) as exc:  # ValueError: closed under us
            raise ConnectionGone(str(exc)) from None
        if len(data) < n:
            raise ConnectionGone("end of stream")
        return data


class Workers:
    """Threads that run jobs as they come, growing while every thread is busy: a job
    may block for long (a stream's emit under backpressure, a pulled read), and a
    fixed pool would then deadlock the calls queued behind it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            grow = False
            if self._idle > 0:
                self._idle -= 1  # an idle thread takes this job
            elif self._count < MAX_THREADS:
                self._count += 1
                grow = True
            # else: at the cap, the job waits for the first thread to finish
        self._jobs.put(job)
        if grow:
            threading.Thread(target=self._run, name=f"{self._name} {self._count}",
                             daemon=True).start()

    def close(self) -> None:
        """Every thread ends once the jobs queued before this are done."""
        with self._lock:
            count, self._count = self._count, MAX_THREADS  # no new threads
        for _ in range(count):
            self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except BaseException:  # a job never ends the thread
                log.exception("%s: a job failed", self._name)
            with self._lock:
                self._idle += 1


class _Pending:
    __slots__ = ("data", "done", "status")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.status = 0
        self.data = b""


def exit_reason(returncode: int | None) -> str:
    """How the host process ended, in words ("killed by SIGSEGV", "exit status 134")."""
    if returncode is None:
        return "its host process stopped answering"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class IsolatedLibrary:
    """A plugin library in its own host process, with `NativeLibrary`'s blocking
    interface (see the module docstring). `spawn()` on the trio loop's thread, then
    `open()` on a worker thread."""

    def __init__(self, path: Path, on_host_call: Callable[[str, bytes], bytes | None],
                 name: str = "", on_exit: Callable[[str], None] | None = None,
                 host_call_nowait: Callable[[str, bytes], bytes | None] | None = None
                 ) -> None:
        """`on_exit(why)`: called once, from a thread of ours, when the process ends
        without being asked to (not after `shutdown`); `host_call_nowait(method,
        data)`: the answer to a callback that needs no waiting (an emit with room),
        given on the reader thread, or None to send it to `on_host_call` on a thread
        that may block."""
        self.path = path
        self.on_host_call = on_host_call
        self.host_call_nowait = host_call_nowait
        self.on_exit = on_exit
        self.name = name or path.stem
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: Channel | None = None
        self._ids = 0
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._closed = True
        self._dead = ""  # why the process ended ("" while it runs)
        self._stopping = False
        self._callbacks = Workers(f"native {self.name} callbacks")

    @property
    def ended(self) -> str:
        """How the process ended ("" while it runs)."""
        return self._dead

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and not self._dead else None

    # ---- lifecycle -----------------------------------------------------------------

    def spawn(self) -> None:
        """Start the host process (see the module docstring for which thread)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "aogstream.host.native.isolated",
                 str(child.fileno()), str(os.getpid())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            parent.close()
            raise LoadError(f"cannot start the plugin's host process: {exc}") from None
        finally:
            child.close()
        self._chan = Channel(parent)
        threading.Thread(target=self._read, name=f"native {self.name} reader",
                         daemon=True).start()

    def open(self) -> None:
        """Have the child dlopen and init the library; `LoadError` says what failed."""
        if self._chan is None:
            self.spawn()
        try:
            status, data = self._request(OPEN, "", str(self.path).encode(), OPEN_TIMEOUT)
        except Crashed:
            raise LoadError(f"its host process ended while loading the library "
                            f"({self._dead or 'no reason known'})") from None
        except CallError as exc:
            raise LoadError(str(exc)) from None
        if status != OK:
            raise LoadError(data.decode("utf-8", "replace"))
        with self._lock:
            if not self._dead:
                self._closed = False

    def call(self, method: str, request: bytes) -> bytes:
        """One call in the child: its raw reply; `CallError` as `NativeLibrary.call`,
        `Crashed` when the process died before answering."""
        with self._lock:
            if self._dead and not self._stopping:
                raise Crashed(self._crash_text())
            if self._closed:
                raise CallError("plugin client is closed")
            self._inflight += 1
        try:
            status, data = self._request(CALL, method, request)
        finally:
            with self._lock:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()
        if status != OK:
            raise CallError(data.decode("utf-8", "replace"))
        return data

    def shutdown(self, drain_timeout: float = 10.0) -> None:
        """No new calls; wait (bounded) for those in flight; the plugin's `shutdown()`
        in the child; then the child exits (killed if it does not) and is reaped."""
        with self._lock:
            already = self._stopping
            self._stopping = self._closed = True
            if not already:
                self._idle.wait_for(lambda: self._inflight == 0, timeout=drain_timeout)
        if already:
            return
        proc = self._proc
        if not self._dead and self._chan is not None:
            try:
                self._request(SHUTDOWN, "", str(drain_timeout).encode(), drain_timeout + 5)
            except CallError:
                pass
        if proc is not None:
            try:
                proc.wait(EXIT_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._chan is not None:
            self._chan.close()

    def kill(self) -> None:
        """End the process now (a load that failed half way)."""
        with self._lock:
            self._stopping = self._closed = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def idle(self) -> bool:
        with self._lock:
            return self._inflight == 0

    # ---- frames ----------------------------------------------------------------------

    def _request(self, kind: int, method: str, data: bytes,
                 timeout: float | None = None) -> tuple[int, bytes]:
        pending = _Pending()
        with self._lock:
            if self._dead:
                raise Crashed(self._crash_text())
            self._ids += 1
            ident = self._ids
            self._pending[ident] = pending
        assert self._chan is not None
        if not self._chan.send(kind, ident, 0, method, data):
            pending.done.wait(5.0)  # the reader is about to notice the end
        elif not pending.done.wait(timeout):
            with self._lock:
                self._pending.pop(ident, None)
            raise CallError(f"the plugin's host process did not answer within {timeout:g} s")
        with self._lock:
            self._pending.pop(ident, None)
            dead, stopping = self._dead, self._stopping
        if not pending.done.is_set() or (pending.status < 0):
            if stopping:  # shut down (drain timed out) or killed on purpose: no crash
                raise CallError("the plugin was shut down while this call ran")
            raise Crashed(self._crash_text() if dead else
                          "its host process ended unexpectedly")
        return pending.status, pending.data

    def _crash_text(self) -> str:
        return f"its native code crashed ({self._dead}) and is being restarted"

    def _read(self) -> None:
        """The reader thread: answers to our calls, and the plugin's callbacks."""
        chan = self._chan
        assert chan is not None
        try:
            while True:
                kind, ident, status, method, data = chan.recv()
                if kind == RESULT:
                    with self._lock:
                        pending = self._pending.get(ident)
                    if pending is not None:
                        pending.status, pending.data = status, data
                        pending.done.set()
                elif kind == HOSTCALL:
                    if self.host_call_nowait is not None:
                        try:
                            reply = self.host_call_nowait(method, data)
                        except Exception:  # it goes the slow way, which answers
                            log.exception("native plugin %s: host callback %s failed",
                                          self.name, method)
                            reply = None
                        if reply is not None:
                            chan.send(HOSTREPLY, ident, 0, "", reply)
                            continue
                    self._callbacks.submit(functools.partial(self._callback, ident, method,
                                                             data))
        except ConnectionGone:
            pass
        except Exception:  # an unreadable frame: treat the process as broken
            log.exception("native plugin %s: reading from its host process failed",
                          self.name)
        self._ended()

    def _callback(self, ident: int, method: str, data: bytes) -> None:
        try:
            reply = self.on_host_call(method, data)
        except Exception:  # the plugin's thread must get an answer
            log.exception("native plugin %s: host callback %s failed", self.name, method)
            reply = failure(f"{method} failed in the host")
        assert self._chan is not None
        self._chan.send(HOSTREPLY, ident, 0, "", reply or b"")

    def _ended(self) -> None:
        """The process closed its end: reap it, fail every call in flight at once."""
        proc = self._proc
        code: int | None = None
        if proc is not None:
            try:
                code = proc.wait(EXIT_GRACE)
            except subprocess.TimeoutExpired:  # it closed the socket but lives on
                proc.kill()
                code = proc.wait()
        with self._lock:
            self._dead = exit_reason(code)
            self._closed = True
            stopping = self._stopping
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            p.status = -1
            p.done.set()
        self._callbacks.close()  # a restart makes new ones: these threads end
        if self._chan is not None:
            self._chan.close()
        if not stopping:
            log.error("native plugin %s: its host process ended (%s)", self.name, self._dead)
            if self.on_exit is not None:
                self.on_exit(self._dead)


# ---- the child: python -m aogstream.host.native.isolated <fd> <parent pid> ------------

class _Child:
    """The host process: one library, its calls on threads, its callbacks relayed."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.lib: NativeLibrary | None = None
        self._lock = threading.Lock()
        self._ids = 0
        self._pending: dict[int, _Pending] = {}
        self._workers = Workers("native call")

    def on_host_call(self, method: str, data: bytes) -> bytes | None:
        """A plugin thread's callback: relayed to the gateway, waited for."""
        pending = _Pending()
        with self._lock:
            self._ids += 1
            ident = self._ids
            self._pending[ident] = pending
        try:
            if not self.chan.send(HOSTCALL, ident, 0, method, data):
                os._exit(0)  # the gateway is gone
            pending.done.wait()
        finally:
            with self._lock:
                self._pending.pop(ident, None)
        return pending.data

    def _answer(self, ident: int, job: Callable[[], tuple[int, bytes]]) -> None:
        try:
            status, data = job()
        except (CallError, LoadError) as exc:
            status, data = (LOAD_ERROR if isinstance(exc, LoadError) else CALL_ERROR,
                            str(exc).encode())
        except Exception as exc:  # noqa: BLE001 - never leave the gateway waiting
            status, data = CALL_ERROR, f"the plugin host failed: {exc!r}".encode()
        self.chan.send(RESULT, ident, status, "", data)

    def _open(self, path: bytes) -> tuple[int, bytes]:
        lib = NativeLibrary(Path(path.decode()), self.on_host_call)
        lib.open()
        self.lib = lib
        return OK, b""

    def _call(self, method: str, data: bytes) -> tuple[int, bytes]:
        if self.lib is None:
            raise CallError("the library is not open")
        return OK, self.lib.call(method, data)

    def _shutdown(self, ident: int, data: bytes) -> None:
        if self.lib is not None:
            self.lib.shutdown(drain_timeout=float(data or b"10"))
        self.chan.send(RESULT, ident, OK)
        _flush_stdio()
        os._exit(0)  # plugin threads may still run: they end with us

    def serve(self) -> None:
        while True:
            try:
                kind, ident, _status, method, data = self.chan.recv()
            except ConnectionGone:
                os._exit(0)  # the gateway is gone: so are we
            if kind == HOSTREPLY:
                with self._lock:
                    pending = self._pending.get(ident)
                if pending is not None:
                    pending.data = data
                    pending.done.set()
            elif kind == CALL:
                self._workers.submit(functools.partial(
                    self._answer, ident, functools.partial(self._call, method, data)))
            elif kind == OPEN:
                self._workers.submit(functools.partial(
                    self._answer, ident, functools.partial(self._open, data)))
            elif kind == SHUTDOWN:
                self._workers.submit(functools.partial(self._shutdown, ident, data))


def _flush_stdio() -> None:
    """What the plugin printed (C stdio buffers) is not lost to `os._exit`."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the gateway dies (Linux); exit now if it already has."""
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


def _ignore(_sig: int, _frame: object) -> None:
    pass


def main(argv: list[str]) -> None:
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    # the gateway decides when we stop: a Ctrl-C or a service manager's SIGTERM to the
    # whole group would otherwise end us first and look like a crash to restart. A
    # handler, not SIG_IGN, which programs the plugin starts would inherit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    sys.setswitchinterval(0.0005)  # calls and callbacks hand the GIL between threads
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="native host %(process)d: %(levelname)s %(message)s")
    _Child(Channel(socket.socket(fileno=fd))).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
