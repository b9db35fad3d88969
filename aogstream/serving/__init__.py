"""Serving: one gateway process, or on every core a primary and N-1 workers on one port.

- `primary`: `serve()`, the process `aogstream server start` runs: it starts the plugins,
  owns the store's writes, serves every route, and with more than one worker it is the
  primary of a `worker_pool.WorkerPool` (with one, it is the whole gateway);
- `worker`: one worker process (`python -m aogstream.serving.worker`), following the
  primary and serving the hot routes;
- `primary_proxy`: what a worker forwards to the primary (management, health, ...);
- `hypercorn_serve`: hypercorn's set-up, the connection-capped accept loop, the
  open-file limit and the listening sockets;
- `process_setup`: what every serving process sets up once: stop signals, GC policy.

**Several processes.** Serving on every core: one primary process and N-1 worker
processes on one port.

The primary (`aogstream server start`) does everything a single gateway does: it
launches and supervises the plugins, owns the store's writes, serves the management
API, and serves service calls too. Each worker is a fresh interpreter (never a fork:
grpc must not be forked once initialised) that serves the same port (SO_REUSEPORT,
so the kernel spreads connections) with the hot routes only:

- plugins: a worker never launches one; it dials the sockets the primary reports
  (`host.attached.AttachedPlugin`), so all workers share **one** set of plugin
  processes and engines, and a restarted plugin is re-dialled by everyone;
- routing: a worker reads the same SQLite store, and rebuilds its in-memory table
  whenever the primary's changes;
- everything else (management, health, plugin list) is proxied to the primary over a
  private unix socket, so there is one writer and one source of truth.

The primary tells each worker what changed over a socketpair (one JSON line per view:
plugins with state/pid/address, the store generation); the worker applies it and
acknowledges. Management answers wait for those acknowledgements (`sync`), so what a
management call reports holds on whichever worker serves the next request. A worker
stops when the primary dies (the socketpair's EOF; not PR_SET_PDEATHSIG, which
fires when the *thread* that spawned it ends, and trio spawns from worker threads); the primary
restarts a worker that dies.
"""
