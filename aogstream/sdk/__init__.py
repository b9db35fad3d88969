"""What a Python plugin author imports.

    from aogstream.sdk import serve, LocalPluginProvider, StreamablePlugin

    class MyPlugin(LocalPluginProvider, StreamablePlugin): ...

    if __name__ == "__main__":
        serve(MyPlugin())

Plugin code reaches the gateway's own models through `self.ctx.llm` (`sdk.llm`).
`current_transport()` says whether the call being served came over gRPC or over the
lane our host may offer beside it (`sdk.lane_server`); plugin code need not care.

The SDK depends only on the wire layer and the manifest types, never on the gateway,
so a plugin built with it runs under aogstream and under AOG alike.
"""

from aogstream.manifest import PluginError
from aogstream.rpc.handshake import COOKIE_KEY, COOKIE_VALUE
from aogstream.sdk.lane_server import current_transport
from aogstream.sdk.llm import (
    PluginContext,
    PluginLlm,
    PluginLlmCompleteResult,
    PluginLlmEmbedResult,
    PluginLlmError,
    PluginLlmImageInput,
    PluginLlmStructuredResult,
    PluginLlmTextInput,
    PluginLlmTrustError,
    PluginLlmUsage,
)
from aogstream.sdk.provider import (
    BidiMessage,
    BidirectionalPlugin,
    LocalPluginProvider,
    PluginProvider,
    RemotePluginProvider,
    StreamablePlugin,
    StreamChunk,
    parse_auth_info,
)
from aogstream.sdk.server import serve

__all__ = [
    "COOKIE_KEY",
    "COOKIE_VALUE",
    "BidiMessage",
    "BidirectionalPlugin",
    "LocalPluginProvider",
    "PluginContext",
    "PluginError",
    "PluginLlm",
    "PluginLlmCompleteResult",
    "PluginLlmEmbedResult",
    "PluginLlmError",
    "PluginLlmImageInput",
    "PluginLlmStructuredResult",
    "PluginLlmTextInput",
    "PluginLlmTrustError",
    "PluginLlmUsage",
    "PluginProvider",
    "RemotePluginProvider",
    "StreamChunk",
    "StreamablePlugin",
    "current_transport",
    "parse_auth_info",
    "serve",
]
