"""Server-sent-events and NDJSON framing shared by the gateway's streaming relays."""

from aogstream.sse.framing import NdjsonDecoder, SseDecoder, encode_ndjson, encode_sse

__all__ = ["NdjsonDecoder", "SseDecoder", "encode_ndjson", "encode_sse"]
