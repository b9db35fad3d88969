"""What every benchmark script shares around its measurements: the common options and
their checks, the run/report/save body, and the exit codes.

    common_args(ap, "ttft")                 # --quick --systems --workers --out ...
    systems = systems_arg(args.systems)     # known names, `direct` included
    bounded("--rounds", n, 1, 50)           # exit naming the option and its range
    return run_measured("cpu", args, systems, measure, p, report, plot, "rounds")
    return script_main(body)                # Ctrl-C/SIGTERM → 130, RuntimeError → 1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .bench import Bench
from .layout import RESULTS
from .logs import progress
from .systems import ALL_SYSTEMS


def common_args(ap: Any, name: str, systems: str = "direct,aogstream,litellm") -> None:
    """The options every script has: --quick, --systems, --workers, --keep-logs, --out,
    --max-seconds, --request-timeout."""
    ap.add_argument("--quick", action="store_true", help="reduced set (make bench)")
    ap.add_argument("--systems", default=systems,
                    help=f"comma-separated, from {', '.join(ALL_SYSTEMS)} (default {systems})")
    ap.add_argument("--workers", type=int, default=None,
                    help="gateway worker processes (passed as --workers when the gateway "
                         "has it; default: the gateway's own default)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="per request, s")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="deadline for all measurements (default: the script's)")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{name}.md",
                    help="markdown report (the .json and .png go beside it)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")


def systems_arg(value: str) -> list[str]:
    out = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in out if s not in ALL_SYSTEMS]
    if bad or not out:
        raise SystemExit(f"--systems: {', '.join(bad) or 'empty'} not known; choose from "
                         f"{', '.join(ALL_SYSTEMS)}")
    if "direct" not in out:
        raise SystemExit("--systems must include direct (the baseline every figure is "
                         "compared with)")
    return out


def bounded(name: str, value: float, lo: float, hi: float) -> float:
    """A command-line value within [lo, hi], else exit naming the option and the range."""
    if not lo <= value <= hi:
        raise SystemExit(f"{name} must be in {lo:g}..{hi:g}, got {value:g}")
    return value


def script_main(body: Callable[[], int]) -> int:
    """Run a script's body: Ctrl-C/SIGTERM → 130, a RuntimeError → its message and 1."""
    try:
        return body()
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    except RuntimeError as exc:
        progress(f"failed: {exc}")
        return 1


# The systems ttft, cpu and throughput compare: the baselines (direct, the floor), the
# default gateway and `--workers 1`, the gateway through a native in-process executor
# (issue 18 judges both plugin kinds against the floor), LiteLLM.
WORKER_COMPARISON = ("direct,floor,aogstream,aogstream-x1,aogstream-native,litellm",
                     "direct,floor,aogstream,aogstream-x1,aogstream-native,aogstream-ollama,"
                     "litellm")


def run_measured(name: str, args: Any, systems: Sequence[str], measure: Callable[..., Any],
                 p: dict[str, Any], report: Callable[..., str], plot: Callable[..., Any],
                 key: str) -> int:
    """The body most scripts share: start the systems, run `measure(bench, p)` within
    `p["max_seconds"]`, print and save `report(bench, p, data)` with `plot(bench, p,
    data)`; the raw data is saved under `key` beside the parameters."""

    def body() -> int:
        with Bench(name, args.quick, systems, workers=args.workers,
                   keep_logs=args.keep_logs) as bench:
            data = bench.run(measure, bench, p, max_seconds=p["max_seconds"])
            md = report(bench, p, data)
            print(md)
            bench.save(md, {"params": p, key: data}, plot(bench, p, data), args.out)
        return 0

    return script_main(body)
