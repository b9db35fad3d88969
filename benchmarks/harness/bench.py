"""One benchmark run: a temp folder for the logs, the stub engine, the systems, the
measurements under a deadline, the report header and the saved results.

    with Bench("ttft", quick=True, systems=("direct", "aogstream", "litellm"),
               workers=None, close_log=False, keep_logs=False) as bench:
        bench.stub          # System: the engine (port, roles, cpu(), rss_kb())
        bench.systems       # {name: System}, in the order asked; missing ones listed
        bench.skipped       # {name: reason} (e.g. LiteLLM not installed)
        bench.adopt(sut)    # a system the script started itself, measured and stopped too
        data = bench.run(main_async, *args, max_seconds=600)   # trio.run + SIGTERM/deadline
        lines = bench.header("title", ["- extra line"])        # load, CPUs, busy warning
        bench.save(markdown, raw_dict, figure)                  # results/<name>.md/.json/.png

`Bench` starts the stub and the systems in `__enter__` and stops everything in
`__exit__` (SIGTERM, 10 s grace, SIGKILL of the process group; also on Ctrl-C/SIGTERM
and, through PR_SET_PDEATHSIG, if the benchmark itself dies). Logs live in a temp folder,
kept when the run fails or with `keep_logs`. `engine=False` runs without the stub engine,
for a script whose systems answer by themselves (relay_stream.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import load
from .layout import HOST, RESULTS
from .logs import progress
from .procfs import NCPU, loadavg
from .systems import (
    ALL_SYSTEMS,
    OBSERVE_OFF,
    RELAY_OLLAMA_DIR,
    System,
    gateway_help,
    litellm_missing,
    start_aogstream,
    start_aogstream_native,
    start_floor,
    start_litellm,
    start_stub,
    stop,
)
from .tables import fmt


class Bench:
    """One benchmark run: temp folder, the stub, the systems, clean-up and reporting."""

    def __init__(self, name: str, quick: bool, systems: Iterable[str] = ("direct",
                 "aogstream", "litellm"), workers: int | None = None, close_log: bool = False,
                 keep_logs: bool = False, stub_args: Sequence[str] = (),
                 engine: bool = True) -> None:
        self.name = name
        self.quick = quick
        self.mode = "quick" if quick else "full"
        self.wanted = [s for s in systems]
        for s in self.wanted:
            if s not in ALL_SYSTEMS:
                raise SystemExit(f"unknown system {s!r}; choose from {', '.join(ALL_SYSTEMS)}")
        if not engine and self.wanted:
            raise SystemExit("the harness's systems relay to the stub engine; "
                             "Bench(engine=False) takes none (adopt your own)")
        self.engine = engine
        self.workers = workers
        self.keep_logs = keep_logs
        self.stub_args = list(stub_args)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.close_log = self.tmp / "closes.jsonl" if close_log else None
        self.stub: System | None = None
        self.systems: dict[str, System] = {}
        self.skipped: dict[str, str] = {}
        self._started: list[System] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.load_start = loadavg()
        self.load_end = ""
        self.foreign = float("nan")
        self.t_begin = time.monotonic()
        self.gateway_options = ""
        self.failed = True

    # ---- lifecycle ----

    def __enter__(self) -> Bench:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        progress(f"{self.name} {self.mode}: load average {self.load_start}, {NCPU} CPUs; "
                 f"logs in {self.tmp}")
        try:
            if self.engine:
                self.stub = start_stub(self.tmp, close_log=self.close_log,
                                       extra=self.stub_args)
                self._started.append(self.stub)
            gateway_help()  # once, before the threads below look at it
            # Start the systems side by side: LiteLLM alone takes ~30 s to import, and
            # each script would otherwise wait for every start-up in turn. The pool's
            # threads must outlive the systems: PR_SET_PDEATHSIG fires when the *thread*
            # that forked a child exits, so the pool is shut down only in __exit__.
            self._pool = concurrent.futures.ThreadPoolExecutor(max(1, len(self.wanted)))
            futures = {s: self._pool.submit(self._start, s) for s in self.wanted}
            errors: list[BaseException] = []
            for s, fut in futures.items():
                try:
                    sut = fut.result()
                except BaseException as err:  # noqa: BLE001 - stop the others first
                    errors.append(err)
                    continue
                if sut is not None:
                    self.systems[s] = sut
                    self._started.append(sut)
                    progress(f"{s} on :{sut.port}: " + ", ".join(
                        f"{role} {pid}" for pid, role in sut.roles.items()))
            if errors:
                raise errors[0]
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self, s: str) -> System | None:
        assert self.stub is not None
        if s == "direct":
            return System("direct", self.stub.proc, self.stub.port, self.stub.log,
                          paths=dict(self.stub.paths), roles=dict(self.stub.roles))
        if s == "floor":
            return start_floor(self.tmp)
        if s == "aogstream":
            return start_aogstream(self.tmp, self.stub, workers=self.workers)
        if s == "aogstream-x1":
            return start_aogstream(self.tmp, self.stub, name=s, workers=1)
        if s in OBSERVE_OFF:
            return start_aogstream(self.tmp, self.stub, name=s, workers=1,
                                   extra_env=OBSERVE_OFF[s])
        if s == "aogstream-ollama":
            sut = start_aogstream(self.tmp, self.stub, name=s, plugin_dir=RELAY_OLLAMA_DIR,
                                  plugin_name="relay-ollama-plugin", workers=self.workers)
            sut.paths = {"ndjson": "/api/chat"}
            sut.notes = {"json": "see aogstream", "sse": "see aogstream"}
            return sut
        if s == "aogstream-native":
            return start_aogstream_native(self.tmp, self.stub, workers=self.workers)
        if s == "aogstream-native-host":
            return start_aogstream_native(self.tmp, self.stub, name=s, workers=self.workers,
                                          transport="host")
        if s == "aogstream-native-iso":
            return start_aogstream_native(self.tmp, self.stub, name=s, workers=self.workers,
                                          isolation="process")
        why = litellm_missing()
        if why:
            self.skipped[s] = why
            progress(f"skipping {s}: {why}")
            return None
        return start_litellm(self.tmp, self.stub)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for sut in reversed(self._started):
            try:
                stop(sut)
            except Exception as err:  # noqa: BLE001 - stop the others anyway
                progress(f"could not stop {sut.name}: {err}")
        self._started.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.keep_logs or self.failed or exc_type is not None:
            progress(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- measuring ----

    def adopt(self, sut: System) -> System:
        """Measure, report and stop a system the script started itself, like its own."""
        self.systems[sut.name] = sut
        self._started.append(sut)
        return sut

    def measured(self) -> list[System]:
        """The stub and every system, each pid once: `direct` on the stub engine *is* the
        stub; an adopted system named `direct` (realtime's WebSocket server) is not."""
        out = [self.stub] if self.stub is not None else []
        seen = {pid for sut in out for pid in sut.pids()}
        return out + [sut for sut in self.systems.values() if not seen & set(sut.pids())]

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, max_seconds: float) -> Any:
        """trio.run(fn, *args) under a deadline, with machine-busy accounting around it;
        SIGTERM/Ctrl-C stop it cleanly (KeyboardInterrupt after trio has unwound)."""
        ours = [os.getpid()] + [p for s in self.measured() for p in s.pids()]
        before = load.mark(ours)

        async def guarded() -> Any:
            with trio.fail_after(max_seconds):
                return await fn(*args)

        try:
            out = trio.run(guarded)
        except trio.TooSlowError:
            raise RuntimeError(f"the measurements took over {max_seconds:.0f} s; "
                               "stopped") from None
        except BaseExceptionGroup as group:
            raise _single(group) from None
        self.foreign = load.foreign_cpus(before, load.mark(ours))
        self.load_end = loadavg()
        return out

    def busy(self) -> bool:
        return load.busy(self.load_start, self.foreign)

    # ---- reporting ----

    def header(self, title: str, extra: Sequence[str] = ()) -> list[str]:
        elapsed = time.monotonic() - self.t_begin
        systems = []
        for name, sut in self.systems.items():
            roles = list(sut.roles.values())
            procs = ", ".join(r if roles.count(r) == 1 else f"{r} ×{roles.count(r)}"
                              for r in sorted(set(roles)))
            systems.append(f"{name} ({procs})")
        engine = ("engine: `benchmarks/stub_engine.py` (trio raw sockets), measured "
                  "separately; " if self.stub is not None else "")
        lines = [
            f"# {title}",
            "",
            f"- mode **{self.mode}**, {self.started_at}, {elapsed:.0f} s; {NCPU} CPUs, load "
            f"average at start **{self.load_start}**, at end {self.load_end or loadavg()}; "
            f"Python {platform.python_version()}",
            f"- systems: {'; '.join(systems)}; {engine}client: one trio process, raw sockets, "
            f"all on {HOST}",
        ]
        if "aogstream-x1" in self.systems:
            lines.append("- `aogstream-x1` (**aogstream ×1**) is the gateway started with "
                         "`--workers 1`; `aogstream` has the default, one serving process "
                         f"per two cores ({max(1, NCPU // 2)} here)")
        if self.skipped:
            lines.append("- not run: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        if self.workers is not None:
            lines.append(f"- gateway workers asked: {self.workers} (passed only if "
                         "`server start --help` lists `--workers`)")
        lines += list(extra)
        ours = "the client, the engine or the systems" if self.stub else "the client or the systems"
        lines.append(f"- other processes on the machine (not {ours}) used "
                     f"**{fmt(self.foreign)} CPUs** on average during the measurements")
        if self.busy():
            lines.append("- **warning: the machine was busy** (load average / other "
                         "processes above): wall-clock figures are inflated and noisy; CPU "
                         "figures suffer less. Rerun on a quiet machine to quote numbers.")
        lines.append("")
        return lines

    def save(self, markdown: str, raw: dict[str, Any], fig: Any = None,
             out: Path | None = None) -> Path:
        """Write results/<name>.md, .json (and .png when a figure is given)."""
        path = out or RESULTS / f"{self.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown)
        raw = {"name": self.name, "mode": self.mode, "started_at": self.started_at,
               "load_start": self.load_start, "load_end": self.load_end,
               "foreign_cpus": self.foreign, "cpus": NCPU,
               "duration_s": round(time.monotonic() - self.t_begin, 1),
               "processes": {n: {str(k): v for k, v in s.roles.items()}
                             for n, s in self.systems.items()},
               "skipped": self.skipped, **raw}
        path.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
        if fig is not None:
            fig.savefig(path.with_suffix(".png"), dpi=110, bbox_inches="tight")
        progress(f"wrote {path} (+ .json{', .png' if fig is not None else ''})")
        self.failed = False
        return path


def _raise_interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _single(group: BaseExceptionGroup) -> BaseException:
    """A lone exception out of nested ExceptionGroups (else the group itself)."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop()
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group

