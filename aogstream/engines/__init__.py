"""Plugin-side toolkit for local engines: install, models, engine processes.

A local plugin (running our SDK) keeps its engine out of the gateway's Python
environment: the engine's packages go into a virtualenv in the plugin's data
directory (`install`), its models into a model store beside it (`models`), and each
loaded model runs as a child process of the plugin (`process`) that dies with it.
`base.EnginePlugin` ties these into AOG's local-plugin contract so each shipped
plugin only says which packages, which models and how to call its engine.
`worker_kit/engine_worker.py` is the stdlib-only HTTP skeleton engine processes use.
Two pure helpers serve the plugins' audio: `pcm` (PCM16 and WAV: pack, read, resample;
the gateway's doors and CLI use it too) and `realtime` (AOG's realtime ASR sessions:
the event envelope, run-task parameters, session errors and the per-plugin session cap).

This `__init__` stays import-free so nothing heavy loads before it is needed.
"""
