"""Shared setups of the tests that more than one module repeats: a gateway serving
native (CLIProxyAPI C ABI) plugin libraries (`harness.native`), and a loopback
OpenAI-compatible "cloud" behind the shipped openai-plugin (`harness.cloud`).

Everything here starts real parts (gateway subprocesses, plugin libraries built from
tests/native, stdlib HTTP servers on loopback); the test modules keep their own
fixture names and only call these.
"""
