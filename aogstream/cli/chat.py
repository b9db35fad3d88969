"""`aogstream chat`: one message, or a conversation over stdin, with the answer printed
as it streams from the gateway's `chat` service."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from aogstream.cli.client import BASE, EXIT_INTERRUPTED, Api, CliError, sse_events


def _chat_turn(api: Api, args: argparse.Namespace, history: list[dict[str, str]],
               out: TextIO) -> str:
    """Send the conversation, print the answer as it streams, return its text."""
    body: dict[str, Any] = {"messages": history, "stream": True}
    if args.model:
        body["model"] = args.model
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    parts: list[str] = []
    with api.stream(f"{BASE}/services/chat", body,
                    headers={"Accept": "text/event-stream"}) as resp:
        if args.verbose:
            print(f"[served by {resp.headers.get('x-aogstream-provider', '?')}]",
                  file=sys.stderr)
        ctype = resp.headers.get("content-type", "")
        events: Iterator[dict[str, Any]]
        if ctype.startswith("application/json"):  # a provider that cannot stream
            events = iter([json.loads(resp.read())])
        else:
            events = sse_events(resp)
        for ev in events:
            if ev.get("finish_reason") == "error" or (
                    "business_code" in ev and "message" in ev and "finished" in ev):
                if parts:
                    out.write("\n")
                raise CliError(f"error: {ev.get('message')}")
            msg = ev.get("message")
            piece = msg.get("content", "") if isinstance(msg, dict) else ""
            if piece:
                parts.append(piece)
                out.write(piece)
                out.flush()
    out.write("\n")
    out.flush()
    return "".join(parts)


def cmd_chat(api: Api, args: argparse.Namespace) -> int:
    """One message, or a conversation over stdin lines whose history goes with every
    turn (a chat model has no memory of its own)."""
    out = sys.stdout
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    if args.message:
        history.append({"role": "user", "content": " ".join(args.message)})
        try:
            _chat_turn(api, args, history, out)
        except KeyboardInterrupt:
            out.write("\n")
            return EXIT_INTERRUPTED
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with aogstream; /clear forgets the conversation, /bye (or Ctrl-D) leaves")
    while True:
        try:
            line = input(">>> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not interactive and not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return 0
        if text == "/clear":
            history = [m for m in history if m["role"] == "system"]
            continue
        history.append({"role": "user", "content": text})
        try:
            answer = _chat_turn(api, args, history, out)
        except KeyboardInterrupt:
            out.write("\n")
            history.pop()
            continue
        except CliError as err:
            history.pop()
            if not interactive or err.message.startswith("aogstream is not running"):
                raise
            print(err.message, file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": answer})
