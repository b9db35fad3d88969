"""The benchmarks' shared harness, one concept per module.

Every benchmark script (ttft.py, cpu.py, throughput.py, knee.py, memory.py, cancel.py,
realtime.py, coldstart.py, relay_stream.py; summary.py for its tables) follows
`../shared/benchmarks.md` through this package, so they all measure the same way:
baseline in the same run, interleaved rounds, medians of round medians, CPU from /proc
for every process of a system, load average and machine-busy warnings in every report.

    client (this process, trio) ──▶ system under test ──▶ stub engine (stub_engine.py)

The scripts write `import harness as h` and use the names below, re-exported here; each
module's docstring says why it is built the way it is.

- `layout`: where things are (HERE, ROOT, RESULTS, HOST).
- `procfs`: what /proc says (read_stat, rss_kb, descendants, cmdline, alive,
  machine_busy, loadavg, CLK_TCK, NCPU).
- `processes`: starting a child, the client's limits (free_port, popen, raise_fd_limit).
- `logs`: what the operator sees (progress, tail).
- `systems`: the systems under test (System, start_stub, start_floor, start_aogstream,
  start_litellm, stop, wait_listening, their command lines stub_argv, aogstream_argv,
  litellm_argv, label, protocol_of, ALL_SYSTEMS).
- `realtime`: AOG's realtime protocol and its systems (run_task, FINISH_TASK, frame_seq,
  event_name, start_direct_ws, start_realtime_floor, start_realtime_gateway,
  read_events).
- `http_client`: the raw-socket HTTP client (call, KeepAlive, Result, chat_body,
  model_name, request_bytes, PROTOCOLS).
- `websocket`: the raw-socket WebSocket client (WsClient, WsError).
- `schedules`: how load is offered (open_loop, closed_loop).
- `load`: is the machine quiet enough to quote figures (mark, foreign_cpus, busy).
- `stats`: percentiles and medians (pct, med).
- `tables`: report cells and markdown tables (fmt, ratio, target, md_table).
- `plots`: figures, matplotlib on Agg (figure, cdf, tidy_log).
- `bench`: one run — start, measure under a deadline, header, save (Bench).
- `script`: the scripts' common options and body (common_args, systems_arg, bounded,
  run_measured, script_main, WORKER_COMPARISON).
"""

from __future__ import annotations

from .bench import Bench
from .http_client import (
    PROTOCOLS,
    RECV,
    KeepAlive,
    Result,
    call,
    chat_body,
    model_name,
    request_bytes,
)
from .layout import HERE, HOST, RESULTS, ROOT
from .logs import progress, tail
from .plots import cdf, figure, tidy_log
from .processes import free_port, popen, raise_fd_limit
from .procfs import (
    CLK_TCK,
    NCPU,
    PAGE_KB,
    alive,
    cmdline,
    descendants,
    loadavg,
    machine_busy,
    read_stat,
    rss_kb,
)
from .realtime import (
    FINISH_TASK,
    REALTIME_PATH,
    REALTIME_PLUGIN,
    REALTIME_PLUGIN_DIR,
    event_name,
    frame_seq,
    read_events,
    run_task,
    start_direct_ws,
    start_realtime_floor,
    start_realtime_gateway,
)
from .schedules import MAX_INFLIGHT, closed_loop, open_loop
from .script import (
    WORKER_COMPARISON,
    bounded,
    common_args,
    run_measured,
    script_main,
    systems_arg,
)
from .stats import med, pct
from .systems import (
    ALL_SYSTEMS,
    LABELS,
    LITELLM_KEY,
    LITELLM_VENV,
    LITELLM_VERSION,
    RELAY_OLLAMA_DIR,
    RELAY_PLUGIN_DIR,
    START_TIMEOUT,
    STOP_TIMEOUT,
    STUB_ENV,
    System,
    aogstream_argv,
    gateway_help,
    label,
    litellm_argv,
    litellm_missing,
    protocol_of,
    start_aogstream,
    start_aogstream_native,
    start_floor,
    start_litellm,
    start_stub,
    stop,
    stub_argv,
    wait_listening,
)
from .tables import fmt, md_table, ratio, target
from .websocket import WsClient, WsError

__all__ = [
    "ALL_SYSTEMS",
    "CLK_TCK",
    "FINISH_TASK",
    "HERE",
    "HOST",
    "LABELS",
    "LITELLM_KEY",
    "LITELLM_VENV",
    "LITELLM_VERSION",
    "MAX_INFLIGHT",
    "NCPU",
    "PAGE_KB",
    "PROTOCOLS",
    "REALTIME_PATH",
    "REALTIME_PLUGIN",
    "REALTIME_PLUGIN_DIR",
    "RECV",
    "RELAY_OLLAMA_DIR",
    "RELAY_PLUGIN_DIR",
    "RESULTS",
    "ROOT",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "STUB_ENV",
    "WORKER_COMPARISON",
    "Bench",
    "KeepAlive",
    "Result",
    "System",
    "WsClient",
    "WsError",
    "alive",
    "aogstream_argv",
    "bounded",
    "call",
    "cdf",
    "chat_body",
    "closed_loop",
    "cmdline",
    "common_args",
    "descendants",
    "event_name",
    "figure",
    "fmt",
    "frame_seq",
    "free_port",
    "gateway_help",
    "label",
    "litellm_argv",
    "litellm_missing",
    "loadavg",
    "machine_busy",
    "md_table",
    "med",
    "model_name",
    "open_loop",
    "pct",
    "popen",
    "progress",
    "protocol_of",
    "raise_fd_limit",
    "ratio",
    "read_events",
    "read_stat",
    "request_bytes",
    "rss_kb",
    "run_measured",
    "run_task",
    "script_main",
    "start_aogstream",
    "start_aogstream_native",
    "start_direct_ws",
    "start_floor",
    "start_litellm",
    "start_realtime_floor",
    "start_realtime_gateway",
    "start_stub",
    "stop",
    "stub_argv",
    "systems_arg",
    "tail",
    "target",
    "tidy_log",
    "wait_listening",
]
