"""Request cost with the PostgreSQL store beside the SQLite store.

Routing reads an in-memory table that is rebuilt only when the store changes, so a
request must cost the same whichever store is behind the gateway, and must not touch
the database. This starts a throwaway PostgreSQL cluster (as the tests do,
tests/pgcluster.py), two gateways with one serving process each and the echo test
plugin — one on SQLite, one on PostgreSQL — and sends them the same non-stream chat
requests over keep-alive connections in interleaved rounds. It reports latency (p50,
p99), CPU-ms per request over each gateway's process tree (gateway and plugin), and
how many transactions PostgreSQL committed per request while the requests ran (its
`pg_stat_database.xact_commit`; the only ones expected are the change listener's
generation check every two seconds).

    .venv/bin/python benchmarks/store_backends.py [--quick]

Writes benchmarks/results/store_backends.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from pgcluster import Cluster, TestDatabase, free_port, pg_bindir  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def start_gateway(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
    full.update({"AOG_DATA_DIR": str(workdir / "data"), "AOGSTREAM_WORKERS": "1",
                 "PYTHONUNBUFFERED": "1", **env})
    log = open(workdir / "gateway.log", "ab")  # open for as long as the gateway runs
    proc = subprocess.Popen([sys.executable, "-m", "aogstream", "server", "start", "--port",
                             str(port), "--plugin-dir", str(REPO / "tests" / "plugins")],
                            cwd=REPO, env=full, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {(workdir / 'gateway.log').read_text()[-2000:]}")
        try:
            r = httpx.get(f"{url}/aog/v0.2/plugin/list", timeout=1.0)
            if r.status_code == 200 and all(p["state"] == "running" for p in r.json()["data"]):
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gateway did not come up")


def tree_cpu(pid: int) -> float:
    top = psutil.Process(pid)
    total = 0.0
    for p in [top, *top.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def commits(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def one_round(url: str, pid: int, n: int) -> dict[str, Any]:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    lat: list[float] = []
    with httpx.Client(timeout=30.0) as client:
        client.post(f"{url}/aog/v0.2/services/chat", json=body).raise_for_status()  # warm
        cpu0, t0 = tree_cpu(pid), time.monotonic()
        for _ in range(n):
            s = time.perf_counter()
            r = client.post(f"{url}/aog/v0.2/services/chat", json=body)
            lat.append((time.perf_counter() - s) * 1000)
            r.raise_for_status()
        wall, cpu = time.monotonic() - t0, tree_cpu(pid) - cpu0
    return {"n": n, "wall_s": wall, "cpu_ms_per_req": cpu * 1000 / n, "lat_ms": lat}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a minute)")
    args = ap.parse_args(argv)
    n, rounds = (300, 3) if args.quick else (1000, 5)
    bindir = pg_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (make sysdeps)", file=sys.stderr)
        return 1
    import tempfile

    cluster = Cluster(bindir)
    procs: list[subprocess.Popen[bytes]] = []
    db: TestDatabase | None = None
    work = Path(tempfile.mkdtemp(prefix="aogstream-bench-store-"))
    try:
        db = TestDatabase(cluster.start())
        (work / "sqlite").mkdir()
        (work / "pg").mkdir()
        sq, sq_url = start_gateway(work / "sqlite", {})
        procs.append(sq)
        pg, pg_url = start_gateway(work / "pg", {
            "AOGSTREAM_DATABASE_URL": db.url,
            "AOGSTREAM_SECRET_KEY": f"bench-{uuid.uuid4().hex}"})
        procs.append(pg)
        out: dict[str, list[dict[str, Any]]] = {"sqlite": [], "postgres": []}
        db_commits: list[float] = []
        for _ in range(rounds):  # interleaved: both see the same machine load
            out["sqlite"].append(one_round(sq_url, sq.pid, n))
            before = commits(db.url)
            res = one_round(pg_url, pg.pid, n)
            # minus this measurement's own query
            res["db_tx_per_req"] = max(0, commits(db.url) - before - 1) / n
            db_commits.append(res["db_tx_per_req"])
            out["postgres"].append(res)
        summary = {}
        for name, rs in out.items():
            lat = [x for r in rs for x in r["lat_ms"]]
            qs = statistics.quantiles(lat, n=100)
            summary[name] = {
                "requests": len(lat), "p50_ms": round(statistics.median(lat), 3),
                "p99_ms": round(qs[98], 3),
                "cpu_ms_per_req": round(statistics.median(r["cpu_ms_per_req"] for r in rs), 3),
                "req_per_s": round(sum(r["n"] for r in rs) / sum(r["wall_s"] for r in rs), 1)}
        summary["postgres"]["db_tx_per_req"] = round(max(db_commits), 5)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "store_backends.json").write_text(json.dumps(
            {"params": {"requests_per_round": n, "rounds": rounds, "workers": 1,
                        "quick": args.quick, "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime())},
             "summary": summary}, indent=2) + "\n")
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        md = ["# Request cost: SQLite store vs PostgreSQL store", "",
              f"{rounds} interleaved rounds × {n} non-stream chat requests (echo test plugin, "
              f"one serving process, keep-alive), {when}, "
              f"load average {os.getloadavg()[0]:.1f}.", "",
              "| store | p50 ms | p99 ms | CPU-ms / request | req/s | DB transactions / request |",
              "|---|---:|---:|---:|---:|---:|"]
        for name, s in summary.items():
            md.append(f"| {name} | {s['p50_ms']} | {s['p99_ms']} | {s['cpu_ms_per_req']} | "
                      f"{s['req_per_s']} | {s.get('db_tx_per_req', 'n/a')} |")
        md += ["", "DB transactions per request counts every commit in the database while "
               "the requests ran (the change listener's generation check included): routing "
               "reads no row per request."]
        (RESULTS / "store_backends.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if db is not None:
            try:
                db.drop()
            except psycopg.Error:
                pass
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
