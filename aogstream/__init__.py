"""aogstream: a streaming-first AI gateway that speaks AOG's wire protocols."""

__version__ = "0.1.0"
AOG_VERSION = "v0.7"  # the AOG host version we present to plugins (AOG_VERSION env)
SPEC_VERSION = "v0.2"  # the HTTP API version in our routes: /aog/v0.2
