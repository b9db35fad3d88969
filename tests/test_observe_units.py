"""Unit tests of the observability pieces that the end-to-end tests cannot pin down.

Real parts: the ring's shared-memory file on disk, prometheus_client itself (in
multi-process mode, in a subprocess so that its process-wide setting does not leak
into this one). Nothing is faked.

Proven:
- the ring keeps the newest N records, oldest overwritten, and a slot being written
  (sequence zeroed) is skipped by a reader rather than read half-written; records of
  several processes' rings come back merged, newest first;
- route labels are bounded: known paths keep their template, anything else is `other`;
- a stream's gaps added in one go give the same histogram as observing each gap;
- the text log line quotes client-chosen values, so a model name cannot forge fields
  or lines (also once the quoted form is remembered);
- the request log's line and the ring's record, formatted straight from the request's
  record, are exactly what the JSON encoder and `text_line` make of its fields (odd
  names, unicode, control characters, None values, WebSocket fields); a record too
  long for a ring slot is shortened and kept; the per-request metrics updated through
  the cached cells sum exactly as the public `inc`/`observe` do;
- the request log's records (made from a template, not by `makeRecord`) carry what
  `makeRecord`'s would, so every handler and format shows the same line.
- a run folder whose primary died is removed at the next start; a live one is kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aogstream.observe.record import RequestRecord
from aogstream.observe.ring import HEADER, SLOT_HEAD, SLOT_SIZE, RingWriter, read_all, read_ring
from aogstream.observe.run import Observer, RouteTable, Settings


def test_the_ring_keeps_the_newest_records_and_skips_a_slot_being_written(tmp_path: Path):
    ring = RingWriter(tmp_path / "requests-1.ring", 4)
    for i in range(10):
        ring.append({"id": i, "ts": i})
    assert [r["id"] for r in read_ring(ring.path)] == [6, 7, 8, 9]
    ring.append({"id": 10, "ts": 10, "model": "m" * 5000})  # too long: shortened, kept
    assert read_ring(ring.path)[-1]["model"] == "m" * 80
    # the writer's first step on the next record: the oldest slot's sequence zeroed
    offset = HEADER.size + (ring.written % ring.slots) * SLOT_SIZE
    SLOT_HEAD.pack_into(ring._map, offset, 0, 0)
    assert [r["id"] for r in read_ring(ring.path)] == [8, 9, 10]
    other = RingWriter(tmp_path / "requests-2.ring", 4)
    other.append({"id": "b", "ts": 9.5})
    assert [r["id"] for r in read_all(tmp_path, 3)] == [10, "b", 9]
    (tmp_path / "requests-3.ring").write_bytes(b"not a ring")
    assert len(read_all(tmp_path, 100)) == 4
    ring.close()
    other.close()


def test_route_labels_are_bounded_to_the_routes_that_exist():
    table = RouteTable(["/health", "/aog/v0.2/services/{service}", "/v1/models",
                        "/v1/models/{model}", "/v0/management/{rest:path}"])
    assert table.label("/health") == "/health"
    assert table.label("/health/") == "/health"
    assert table.label("/aog/v0.2/services/chat") == "/aog/v0.2/services/{service}"
    assert table.label("/v1/models") == "/v1/models"
    assert table.label("/v1/models/qwen") == "/v1/models/{model}"
    assert table.label("/v0/management/a/b/c") == "/v0/management/{rest}"
    for odd in ("/v1/models/a/b", "/etc/passwd", "/aog/v0.2/services/a/b", "/"):
        assert table.label(odd) == "other", odd
    for i in range(RouteTable.MAX_CACHE * 2):  # the cache stays bounded too
        table.label(f"/x/{i}")
    assert len(table._cache) <= RouteTable.MAX_CACHE


def test_gaps_added_in_one_go_equal_gaps_observed_one_by_one(tmp_path: Path):
    script = """
import json, sys
from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
from aogstream.observe.metrics import GAP_BUCKETS, StreamGaps, add_observations
gaps = [0.0001, 0.003, 0.003, 0.02, 0.7, 9.0, 0.0005]
one = Histogram("one", "d", ["s"], buckets=GAP_BUCKETS, registry=None).labels("x")
batch = Histogram("batch", "d", ["s"], buckets=GAP_BUCKETS, registry=None).labels("x")
sg = StreamGaps()
for g in gaps:
    one.observe(g)
    sg.add(g)
add_observations(batch, sg)
reg = CollectorRegistry()
multiprocess.MultiProcessCollector(reg, path=sys.argv[1])
out = {}
for family in reg.collect():
    for s in family.samples:
        out[s.name + json.dumps(sorted(s.labels.items()))] = s.value
print(json.dumps(out))
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    samples = json.loads(done.stdout)
    one = {k[3:]: v for k, v in samples.items() if k.startswith("one")}
    batch = {k[5:]: v for k, v in samples.items() if k.startswith("batch")}
    assert one and one.keys() == batch.keys()
    for k, v in one.items():
        assert abs(batch[k] - v) < 1e-9, (k, v, batch[k])
    assert one['_count[["s", "x"]]'] == 7


def test_the_text_line_quotes_what_clients_chose(tmp_path: Path):
    observer = Observer(tmp_path, Settings(metrics=False, request_log="off", history=0),
                        "w1")
    rec = RequestRecord("a-1", "http", "POST", "/v1/chat/completions", 0.0, 1.0)
    rec.model, rec.status = "x status=500\nrequest GET /", 200
    line = Observer.text_line(observer.fields(rec, "/v1/chat/completions", 200))
    assert "\n" not in line
    assert 'model="x status=500\\nrequest GET /"' in line
    assert line.startswith("request POST /v1/chat/completions id=a-1 process=w1 ")
    assert "status=200" in line and "ttfb_ms=-" in line and "cancelled=false" in line
    observer.close()


def test_lines_made_from_the_record_equal_the_lines_made_from_its_fields(tmp_path: Path):
    from aogstream.observe.run import _COMPACT

    observer = Observer(tmp_path, Settings(metrics=False, request_log="off", history=0),
                        "w1")
    recs = []
    for kind, model, ttfb, code in (("http", "qwen2.5:0.5b", 0.0123456, None),
                                    ("http", 'x "q"\nrequest GET /\u2028é😀', None, None),
                                    ("websocket", "m\x00\x1f", 1e-7, 1006),
                                    ("websocket", "", None, None)):
        rec = RequestRecord("1a-7", kind, "GET" if kind == "websocket" else "POST",
                            "/v1/é/" + "p" * 300, 1.0, 1796551931.41749)
        rec.model, rec.ttfb, rec.duration, rec.close_code = model, ttfb, 12.3456789, code
        rec.service, rec.provider, rec.plugin = "chat", "a b", "plug\t"
        rec.status, rec.bytes_in, rec.bytes_out, rec.chunks = 502, 10, 20**9, 3
        rec.stream, rec.cancelled, rec.frames_in, rec.frames_out = True, kind == "http", 4, 5
        recs.append(rec)
    for rec in recs:
        for _ in range(2):  # and once the quoted forms are remembered
            fields = observer.fields(rec, "/v1/{x}", 499)
            assert observer.json_line(rec, "/v1/{x}", 499) == _COMPACT.encode(fields)
            assert json.loads(observer.json_line(rec, "/v1/{x}", 499)) == fields
            assert observer.text_of(rec, "/v1/{x}", 499) == Observer.text_line(fields)
    observer.close()


def test_a_record_encoded_too_long_for_a_slot_is_shortened_and_kept(tmp_path: Path):
    ring = RingWriter(tmp_path / "requests-1.ring", 4)
    record = {"id": 1, "ts": 1, "path": "/p", "model": "m" * 5000}
    ring.append_encoded(json.dumps(record).encode(), lambda: record)
    ring.append_encoded(b'{"id":2,"ts":2}', lambda: {"id": 2, "ts": 2})
    assert [(r["id"], r.get("model")) for r in read_ring(ring.path)] == [(1, "m" * 80),
                                                                         (2, None)]
    ring.close()


def test_request_metrics_through_the_cached_cells_equal_the_public_methods(tmp_path: Path):
    script = """
import json, sys
from prometheus_client import CollectorRegistry, multiprocess
from aogstream.observe.metrics import Metrics
m = Metrics()
for ttfb, duration, size, status in ((0.004, 0.3, 10, 200), (None, 0.05, 0, 200),
                                     (0.01, 0.01, 5, 200), (2.5, 400.0, 7, 502),
                                     (0.0, 0.0, 1, 200)):
    m.request_done("/r", "chat", status, ttfb, duration, size, False, None)
    if ttfb is not None:
        m.ttfb.labels("/r2", "chat").observe(ttfb)
    m.duration.labels("/r2", "chat").observe(duration)
    m.requests.labels("/r2", "chat", str(status)).inc()
reg = CollectorRegistry()
multiprocess.MultiProcessCollector(reg, path=sys.argv[1])
out = {}
for family in reg.collect():
    for s in family.samples:
        out[s.name + json.dumps(sorted(s.labels.items()))] = s.value
print(json.dumps(out))
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    samples = json.loads(done.stdout)
    cached = {k.replace('"/r"', "R"): v for k, v in samples.items() if '"/r"' in k}
    public = {k.replace('"/r2"', "R"): v for k, v in samples.items() if '"/r2"' in k}
    assert public and cached.keys() == public.keys()
    for k, v in public.items():
        assert abs(cached[k] - v) < 1e-9, (k, v, cached[k])
    assert samples['aogstream_response_bytes_total[["service", "chat"]]'] == 23


def test_the_quoted_form_is_remembered_and_still_quotes(tmp_path: Path):
    observer = Observer(tmp_path, Settings(metrics=False, request_log="off", history=0),
                        "w1")
    rec = RequestRecord("a-1", "http", "POST", "/v1/chat/completions", 0.0, 1.0)
    rec.model = "x status=500\nrequest GET /"
    lines = {Observer.text_line(observer.fields(rec, "/v1/chat/completions", 200))
             for _ in range(3)}
    assert len(lines) == 1 and 'model="x status=500\\nrequest GET /"' in lines.pop()
    observer.close()


def test_request_log_records_carry_what_make_record_gives():
    import logging
    import threading

    from aogstream.observe.run import _RecordTemplate

    logger = logging.getLogger("aogstream.requests")
    template = _RecordTemplate(logger)
    made = template.make("request GET /x id=1")
    usual = logger.makeRecord(logger.name, logging.INFO, made.pathname, 0,
                              "request GET /x id=1", (), None)
    timed = {"created", "msecs", "relativeCreated"}
    assert {k: v for k, v in vars(made).items() if k not in timed} == \
        {k: v for k, v in vars(usual).items() if k not in timed}
    assert abs(made.created - usual.created) < 1.0
    assert abs(made.relativeCreated - usual.relativeCreated) < 1000.0
    assert made.msecs == int(made.msecs) and 0 <= made.msecs < 1000
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s "
                            "%(process)d %(module)s: %(message)s")
    assert fmt.format(made).split(" ", 2)[2] == fmt.format(usual).split(" ", 2)[2]
    # from another thread: a record made the usual way, with that thread's name
    out: list[logging.LogRecord] = []
    worker = threading.Thread(target=lambda: out.append(template.make("l")), name="other")
    worker.start()
    worker.join()
    assert out[0].threadName == "other"


def test_a_dead_primarys_run_folder_is_removed_at_the_next_start(tmp_path: Path):
    from aogstream.observe.run import OWNER_FILE, RUN_PREFIX, remove_abandoned_runs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    abandoned, alive, unknown = (tmp_path / f"{RUN_PREFIX}{n}" for n in ("a", "b", "c"))
    for folder in (abandoned, alive, unknown):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    (abandoned / OWNER_FILE).write_text(dead.stdout)
    (alive / OWNER_FILE).write_text(f"{os.getpid()}\n")
    assert remove_abandoned_runs(tmp_path) == [abandoned]
    assert not abandoned.exists() and alive.exists() and unknown.exists()
