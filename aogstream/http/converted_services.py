"""AOG's own services route for providers that speak another flavor than AOG's.

A plugin may declare `config_ref: openai:chat`: it takes OpenAI's requests and answers
in OpenAI's shapes. An AOG app calling `/aog/v0.2/services/chat` still sends and expects
AOG's, so `HotRoutes` hands such requests here whenever one of the routes converts
(`FlavorCalls.converts`): the request goes out in the provider's flavor, the answer,
each stream chunk and each error come back in AOG's. Routes whose providers all speak
AOG never come here and keep the relay with no conversion at all.
"""

from __future__ import annotations

from typing import Any

from aogstream import errors
from aogstream.asgi_types import Receive, Send
from aogstream.convert import PIVOT
from aogstream.gateway import Route
from aogstream.http.asgi import send_json
from aogstream.http.flavor_calls import Door, FlavorCalls


async def serve_converted_service(calls: FlavorCalls, service: str, aog: bytes,
                                  obj: dict[str, Any], routes: list[Route], receive: Receive,
                                  send: Send, *, ndjson: bool = False) -> None:
    """`/aog/v0.2/services/<service>` when a provider speaks another flavor: the AOG
    request converted to the provider's flavor, the answer back to AOG's shapes."""
    door = Door(PIVOT, service, "POST")
    model = obj.get("model") if isinstance(obj.get("model"), str) else None
    try:
        await calls.dispatch(door, routes, aog, model, obj.get("stream") is True,
                             receive, send, ndjson=ndjson)
    except errors.GatewayError as err:
        await send_json(send, err.status, err.body())
