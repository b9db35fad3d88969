"""The CLIProxyAPI plugin ABI (version 1) through ctypes: load, init, call, shut down.

The C side (spec/native-abi.md §1): the library exports
`int cliproxy_plugin_init(const cliproxy_host_api*, cliproxy_plugin_api*)`; the host
fills `cliproxy_host_api` {abi_version, host_ctx, call, free_buffer}, the plugin fills
`cliproxy_plugin_api` {abi_version, call, free_buffer, shutdown}; every answer comes
back in a `cliproxy_buffer` {ptr, len} the plugin allocated and takes back through its
own `free_buffer(ptr, len)` with the very length it gave (Rust plugins rebuild their
`Vec` from it).

Why the details matter:

* plugins keep the `host` pointer from init and call it later from their own threads,
  so the host table, the `host_ctx` word it points to and the ctypes callback objects
  live as long as the library (module-level callbacks; the table on the instance);
* `call` releases the GIL (a `CFUNCTYPE` pointer), so many calls run at once per
  plugin on worker threads; the plugin must be thread-safe, as under CPA;
* host callbacks may arrive on any thread, re-entrantly: the dispatcher only copies
  the request, hands it to the library's `on_host_call`, and answers in a `malloc`
  buffer that the host's `free_buffer` (libc `free`) releases; it never raises into C.

This module knows nothing of trio, JSON payloads (beyond spotting an error envelope) or
the gateway: `NativeLibrary.call`
is a blocking call for a worker thread.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from aogstream.host.native.gojson import is_error_envelope

log = logging.getLogger(__name__)

ABI_VERSION = 1
INIT_SYMBOL = "cliproxy_plugin_init"


class Buffer(ctypes.Structure):
    """`cliproxy_buffer`: {void* ptr; size_t len;}."""

    _fields_ = [("ptr", ctypes.c_void_p), ("len", ctypes.c_size_t)]


# int call(void* host_ctx, const char* method, const uint8_t* req, size_t len, cliproxy_buffer*)
HOST_CALL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p,
                             ctypes.c_size_t, ctypes.POINTER(Buffer))
# void free_buffer(void* ptr, size_t len)
FREE_BUFFER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)
# The plugin's free_buffer as the host calls it after each call: with the GIL held (a
# free returns at once), so the calling thread does not give the GIL up and wait to get
# it back a second time per call (each such wait is a thread switch when the event loop
# thread is busy); a callback it might make still works (the thread holds the GIL).
FREE_BUFFER_HOLDING_GIL = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)
# int call(const char* method, const uint8_t* req, size_t len, cliproxy_buffer* response)
PLUGIN_CALL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_size_t, ctypes.POINTER(Buffer))
SHUTDOWN = ctypes.CFUNCTYPE(None)


class HostApi(ctypes.Structure):
    """`cliproxy_host_api`, field order normative (offsets 0, 8, 16, 24 on 64-bit)."""

    _fields_ = [("abi_version", ctypes.c_uint32), ("host_ctx", ctypes.c_void_p),
                ("call", HOST_CALL), ("free_buffer", FREE_BUFFER)]


class PluginApi(ctypes.Structure):
    """`cliproxy_plugin_api`, zeroed by the host and filled by the plugin's init."""

    _fields_ = [("abi_version", ctypes.c_uint32), ("call", PLUGIN_CALL),
                ("free_buffer", FREE_BUFFER), ("shutdown", SHUTDOWN)]


# the C allocator whose blocks the host's free_buffer releases (import must not fail
# where the loader is not supported: it then refuses with a message instead)
_libc = ctypes.CDLL(None) if os.name == "posix" else ctypes.cdll.msvcrt
_malloc = _libc.malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]
_free = _libc.free
_free.restype = None
_free.argtypes = [ctypes.c_void_p]

# Which library a host_ctx belongs to (the word host_ctx points to holds the key).
_registry: dict[int, NativeLibrary] = {}
_registry_lock = threading.Lock()
_keys = itertools.count(1)


class LoadError(Exception):
    """The library cannot be used: the message says why (for the log and the list)."""


class CallError(Exception):
    """A call that failed below the JSON level (closed client, rc != 0 without an error
    envelope)."""


class Crashed(CallError):
    """The library's process died under the call (`isolation: process`, module
    `isolated`): the message says how, and that it is being restarted."""


def _dispatch(ctx: int | None, method: bytes | None, req: int | None, req_len: int,
              response: ctypes._Pointer[Buffer]) -> int:
    """`host_api.call`: from any thread, re-entrant; never lets an exception reach C."""
    try:
        if response:
            response[0].ptr = None
            response[0].len = 0
        if not ctx or not method:
            return 1
        key = ctypes.c_size_t.from_address(ctx).value
        lib = _registry.get(key)
        if lib is None:
            return 1
        data = ctypes.string_at(req, req_len) if req and req_len else b""
        reply = lib.on_host_call(method.decode("utf-8", "replace"), data)
        if not reply or not response:
            return 0
        ptr = _malloc(len(reply))
        if not ptr:
            return 1
        ctypes.memmove(ptr, reply, len(reply))
        response[0].ptr = ptr
        response[0].len = len(reply)
        return 0
    except BaseException:  # an exception must never unwind into C
        log.exception("native host callback failed")
        return 1


def _host_free(ptr: int | None, _len: int) -> None:
    if ptr:
        _free(ptr)


# Module-level, so they outlive every library that may still call them.
_HOST_CALL = HOST_CALL(_dispatch)
_HOST_FREE = FREE_BUFFER(_host_free)


class NativeLibrary:
    """One loaded plugin library. `open()` and `call()` block: run them in threads."""

    def __init__(self, path: Path, on_host_call: Callable[[str, bytes], bytes | None]) -> None:
        self.path = path
        self.on_host_call = on_host_call
        self._dll: ctypes.CDLL | None = None
        self._api = PluginApi()
        self._host = HostApi()
        self._ctx: int | None = None
        self._key = 0
        self._closed = True
        self._inflight = 0
        self._idle = threading.Condition()
        # the plugin's call and free_buffer, bound once at open: reading a function
        # pointer field of the table builds a new ctypes object on every access
        self._call: Callable[..., int] | None = None
        self._free_buffer: Callable[[int, int], None] | None = None

    def open(self) -> None:
        """dlopen (RTLD_NOW | RTLD_LOCAL), init, validate; `LoadError` says what is wrong."""
        try:
            dll = ctypes.CDLL(str(self.path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:  # the loader's words, without this machine's folders
            raise LoadError(f"cannot load the library: "
                            f"{str(exc).replace(str(self.path), self.path.name)}") from None
        try:
            init = getattr(dll, INIT_SYMBOL)
        except AttributeError:
            _dlclose(dll)
            raise LoadError(f"missing {INIT_SYMBOL}") from None
        init.restype = ctypes.c_int
        init.argtypes = [ctypes.POINTER(HostApi), ctypes.POINTER(PluginApi)]
        self._key = next(_keys)
        self._ctx = _malloc(ctypes.sizeof(ctypes.c_size_t))
        if not self._ctx:
            _dlclose(dll)
            raise LoadError("out of memory")
        ctypes.c_size_t.from_address(self._ctx).value = self._key
        self._host.abi_version = ABI_VERSION
        self._host.host_ctx = self._ctx
        self._host.call = _HOST_CALL
        self._host.free_buffer = _HOST_FREE
        with _registry_lock:
            _registry[self._key] = self
        rc = init(ctypes.byref(self._host), ctypes.byref(self._api))
        problem = ""
        if rc != 0:
            problem = f"{INIT_SYMBOL} returned {rc}"
        elif self._api.abi_version != ABI_VERSION:
            problem = (f"plugin ABI version {self._api.abi_version} is not supported "
                       f"(this host speaks {ABI_VERSION})")
        elif not self._api.call or not self._api.free_buffer:
            problem = "plugin function table is incomplete (call and free_buffer are required)"
        if problem:
            if self._api.shutdown:
                self._api.shutdown()
            self._forget()
            _dlclose(dll)
            raise LoadError(problem)
        self._call = self._api.call
        free_buffer = ctypes.cast(self._api.free_buffer, ctypes.c_void_p).value
        assert free_buffer is not None  # checked above
        self._free_buffer = FREE_BUFFER_HOLDING_GIL(free_buffer)
        self._dll = dll
        self._closed = False

    def call(self, method: str, request: bytes) -> bytes:
        """One call: the raw reply (an envelope). `CallError` for rc != 0 without an
        error envelope (the caller decodes envelopes) or a closed library."""
        with self._idle:
            if self._closed:
                raise CallError("plugin client is closed")
            self._inflight += 1
            call, free_buffer = self._call, self._free_buffer
        assert call is not None and free_buffer is not None  # set by open()
        try:
            resp = Buffer()
            rc = call(method.encode("utf-8"), request or None, len(request),
                      ctypes.byref(resp))
            ptr, size = resp.ptr, resp.len
            try:
                raw = ctypes.string_at(ptr, size) if ptr and size else b""
            finally:
                if ptr:
                    free_buffer(ptr, size)
        finally:
            with self._idle:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()
        if rc != 0:
            if not is_error_envelope(raw):
                text = raw[:300].decode("utf-8", "replace")
                raise CallError(f"plugin call {method} returned {rc}: {text}")
        return raw

    def shutdown(self, drain_timeout: float = 10.0) -> None:
        """No new calls; wait (bounded) for those in flight; the plugin's `shutdown()`.

        The library stays mapped: plugin threads may still be on their way out, and a
        dlclose under them would crash the gateway."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            self._idle.wait_for(lambda: self._inflight == 0, timeout=drain_timeout)
        if self._api.shutdown:
            self._api.shutdown()
        self._forget()

    def idle(self) -> bool:
        """No call is running in the library."""
        with self._idle:
            return self._inflight == 0

    def _forget(self) -> None:
        with _registry_lock:
            _registry.pop(self._key, None)
        # host_ctx stays allocated: a late callback then reads a key nobody owns (rc 1)
        # instead of freed memory


def _dlclose(dll: ctypes.CDLL) -> None:
    try:
        import _ctypes

        _ctypes.dlclose(dll._handle)
    except Exception:  # noqa: BLE001 - best effort: failing to unmap leaks, nothing worse
        pass
