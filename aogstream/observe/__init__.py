"""What the gateway is doing: the request log, recent requests, Prometheus metrics.

- `record`: one request's record, and the two hooks the gateway core calls to say
  which service, model, provider and plugin served it;
- `middleware`: the ASGI wrapper every request and WebSocket session of a serving
  process passes through (the one place that sees them all);
- `ring`: each process's last N requests in a shared-memory file, read by the primary;
- `metrics`: prometheus_client in multi-process mode across the primary and workers;
- `run`: settings, the run's directory, and each serving process's `Observer`.

Nothing here reads request or answer bodies, headers beyond the answer's content type,
or keys. The routes that show it all are `http.observability`.
"""
