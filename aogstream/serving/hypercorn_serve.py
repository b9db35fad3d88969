"""Hypercorn's set-up for one serving process, and what that process may hold open:
file descriptors and client connections.

`hypercorn_config` is the one hypercorn configuration (the primary's and a worker's);
`listen_socket` is a public listening socket, shared by every process through
SO_REUSEPORT when there are several.

A connection is a file descriptor, and so is every plugin socket, pipe, store file and
log the gateway needs to keep working. Under the usual soft limit of 1,024 open files,
about a thousand clients that open connections and never finish their requests took
the last descriptors: `accept()` and everything else failed with "too many open
files", for every client and for the gateway's own plugin calls. Three things stop it:

- **The soft limit is raised to the hard limit at start** (`raise_open_file_limit`):
  the soft limit is a default for programs that never need more, and the hard limit
  is what the operator allows; children (plugins, engines) inherit it.
- **A cap on client connections below that limit** (`connection_cap`): hypercorn has
  no such setting, and an ASGI-level counter would come too late, since hypercorn
  accepts the socket (spending the descriptor) before the app hears of it. So
  `serve` runs hypercorn's own connection handler (`TCPServer`) behind an accept loop
  that takes a slot before it calls `accept()` and gives it back when the connection
  closes. Past the cap, new connections wait in the kernel's listen backlog, costing
  this process nothing, and are served as soon as a slot frees; the descriptors left
  (`FD_RESERVE`, at least an eighth of the limit) stay for plugins, the store and
  the engines' pipes. The private unix socket the worker processes proxy through is
  not capped: only workers reach it, each through a bounded connection pool.
- **Slow clients are cut**, so a slot cannot be held for ever: hypercorn times out a
  request head after `keep_alive_timeout` (5 s), and the request body has its own
  deadline (`http.asgi.read_body`, `AOGSTREAM_BODY_TIMEOUT`).

`serve` is `hypercorn.trio.serve` (0.18, pinned) for plain-TCP and unix binds, with
the capped accept loop in place of `trio.serve_listeners`; lifespan, graceful
shutdown and the per-connection protocol are hypercorn's own code.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from wsgiref.handlers import format_date_time

import hypercorn.config
import hypercorn.trio.tcp_server
import trio
from hypercorn.statsd import StatsdLogger
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from aogstream.config import Config
from aogstream.http.asgi import CLIENT_WATCH, ClientWatch

log = logging.getLogger("aogstream")

# The most client connections one serving process takes by default (~32 KiB each per
# open stream: 8,192 of them are ~256 MiB); AOGSTREAM_MAX_CONNECTIONS sets another.
DEFAULT_MAX_CONNECTIONS = 8192
# Descriptors kept back from clients: plugin sockets and pipes, the store and its WAL,
# logs, engine downloads. At least this many, and at least an eighth of the limit.
FD_RESERVE = 128
# At most this many open client connections still count as a quiet moment (`is_quiet`).
QUIET_CONNECTIONS = 4
# accept() failing for want of resources: wait and retry, as trio.serve_listeners does.
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class HypercornConfig(hypercorn.config.Config):
    """hypercorn's settings, with the headers it adds to every answer (`Date`, `Server`)
    made once a second rather than per answer: hypercorn formats the date for each
    response (a `gmtime` and string building), the same text all second long. The
    headers are hypercorn's own, byte for byte; with alt-svc headers (HTTP/3) the
    method is hypercorn's."""

    _date_second = -1
    _date_header = b""

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        if self.alt_svc_headers or self._quic_addresses or not self.include_date_header:
            return super().response_headers(protocol)
        now = int(time.time())
        if now != self._date_second:
            self._date_header = format_date_time(now).encode("ascii")
            self._date_second = now
        if self.include_server_header:
            return [(b"date", self._date_header),
                    (b"server", b"hypercorn-" + protocol.encode("ascii"))]
        return [(b"date", self._date_header)]


def hypercorn_config(cfg: Config) -> hypercorn.config.Config:
    """The hypercorn settings every serving process uses (its binds are set by the caller)."""
    hc = HypercornConfig()
    hc.bind = [f"{cfg.host}:{cfg.port}"]
    hc.backlog = 2048  # hypercorn's 100 makes connection bursts wait on SYN retries
    hc.accesslog = None
    hc.errorlog = logging.getLogger("aogstream.http")  # not "hypercorn.error": it is no error log
    hc.websocket_max_message_size = cfg.ws_max_message_bytes
    hc.read_timeout = None  # a read timeout would also kill quiet SSE streams
    hc.graceful_timeout = 3.0
    return hc


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """The public listening socket of one serving process; with several workers each
    binds its own with SO_REUSEPORT and the kernel balances connections across them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock



def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft
    limit now in force (unchanged when the platform refuses)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1024
    target = hard
    if target == resource.RLIM_INFINITY or target < 0:
        target = max(soft, 1 << 20)  # "unlimited": take a large finite number
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target,
                        exc)
    return soft


def connection_cap(configured: int, open_files: int) -> int:
    """How many client connections one serving process holds at once: the configured
    number (0: `DEFAULT_MAX_CONNECTIONS`), never more than the open-file limit less the
    reserve, and at least 1."""
    reserve = max(FD_RESERVE, open_files // 8)
    ceiling = max(1, open_files - reserve)
    wanted = configured if configured > 0 else DEFAULT_MAX_CONNECTIONS
    return max(1, min(wanted, ceiling))


def connection_slots(cap: int) -> trio.Semaphore:
    """The slots `serve` takes one of per client connection (`cap` from `connection_cap`)."""
    return trio.Semaphore(cap, max_value=cap)


def is_quiet(slots: trio.Semaphore) -> bool:
    """True when at most `QUIET_CONNECTIONS` client connections hold a slot (an idle
    client's keep-alive pool, a health probe): a moment for work that pauses the
    process, such as a full garbage collection. Read now and then, never per request."""
    return (slots.max_value or 0) - slots.value <= QUIET_CONNECTIONS


async def _accept_loop(listener: trio.SocketListener, slots: trio.Semaphore | None,
                       handle: Callable[[trio.SocketStream], Awaitable[None]],
                       nursery: trio.Nursery) -> None:
    """Accept connections one slot at a time (no slot: the kernel queues the client)."""
    while True:
        if slots is not None:
            await slots.acquire()
        try:
            stream = await listener.accept()
        except OSError as exc:
            if slots is not None:
                slots.release()
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error("accept() failed: %s; retrying in 100 ms", errno.errorcode[exc.errno])
            await trio.sleep(0.1)
            continue
        except BaseException:
            if slots is not None:
                slots.release()
            raise
        nursery.start_soon(_run_connection, stream, handle, slots)


async def _run_connection(stream: trio.SocketStream,
                          handle: Callable[[trio.SocketStream], Awaitable[None]],
                          slots: trio.Semaphore | None) -> None:
    try:
        await handle(stream)
    finally:
        try:
            await trio.aclose_forcefully(stream)
        finally:
            if slots is not None:
                slots.release()


class _Watched:
    """A request's app, run with its `ClientWatch` in `CLIENT_WATCH` (set in the
    request's own task, so only this request and the tasks it starts see it)."""

    __slots__ = ("app", "watch")

    def __init__(self, app: Any, watch: ClientWatch) -> None:
        self.app = app
        self.watch = watch

    async def __call__(self, scope: Any, receive: Any, send: Any, sync_spawn: Any,
                       call_soon: Any) -> None:
        CLIENT_WATCH.set(self.watch)
        await self.app(scope, receive, send, sync_spawn, call_soon)


class WatchedTaskGroup(TaskGroup):
    """hypercorn's per-connection task group, telling each HTTP request's
    `ClientWatch` when its client hangs up: hypercorn queues `http.disconnect` for the
    app and cancels nothing, so without this every provider call would need a task of
    its own waiting on `receive()` for that message (a nursery, a task and three task
    steps per request: a few percent of a unary request's CPU)."""

    async def spawn_app(self, app: Any, config: hypercorn.config.Config, scope: Any,
                        send: Callable[[Any], Awaitable[None]]
                        ) -> Callable[[Any], Awaitable[None]]:
        if scope.get("type") != "http":
            return await super().spawn_app(app, config, scope, send)
        watch = ClientWatch()
        put = await super().spawn_app(_Watched(app, watch), config, scope, send)

        async def app_put(message: Any) -> None:
            if message.get("type") == "http.disconnect":
                watch.client_left()
            await put(message)

        return app_put


async def serve(app: Any, config: hypercorn.config.Config, slots: trio.Semaphore, *,
                shutdown_trigger: Callable[[], Awaitable[None]],
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """`hypercorn.trio.serve(app, config)` with at most as many TCP connections open at
    once as `slots` (from `connection_slots`) holds; unix-socket binds are not counted.
    No TLS: the gateway serves plain HTTP (loopback by default)."""
    config.set_statsd_logger_class(StatsdLogger)
    # hypercorn 0.18 (pinned) makes each connection's task group by this module-level
    # name; the watched one only adds the client-left signal (see WatchedTaskGroup)
    hypercorn.trio.tcp_server.TaskGroup = WatchedTaskGroup  # type: ignore[misc]
    asgi = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        # hypercorn annotates the stream as TLS only; its own trio serve passes plain ones
        await TCPServer(asgi, config, context, ConnectionState(lifespan_state.copy()),
                        stream)  # type: ignore[arg-type]

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            if sockets.secure_sockets or sockets.quic_sockets:
                raise ValueError("TLS binds are not supported here; serve plain HTTP")
            binds = []
            listeners = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
                listeners.append((trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                                  slots if tcp else None))
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"http://{bind}")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for listener, cap in listeners:
                        nursery.start_soon(_accept_loop, listener, cap, handle,
                                           server_nursery)
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                for listener, _cap in listeners:
                    with trio.CancelScope(shield=True):
                        await listener.aclose()
                server_nursery.cancel_scope.deadline = (trio.current_time()
                                                        + config.graceful_timeout)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
