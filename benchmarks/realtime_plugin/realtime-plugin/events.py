"""The realtime stub's server events, shared by the plugin (plugin.py) and the direct
WebSocket baseline (../direct_ws.py) so both send byte-identical frames. Plain string
formatting, no json.dumps: the stub's own cost per frame should be as small as the
benchmark can make it, and equal on both sides."""

from __future__ import annotations

FRAME_MS = 20  # the benchmark's frame length, for the begin/end times a partial reports


def result_event(task_id: str, seq: int) -> bytes:
    """The `result-generated` partial answering frame `seq` (AOG's envelope)."""
    begin, end = seq * FRAME_MS, (seq + 1) * FRAME_MS
    return (
        f'{{"header":{{"action":"","streaming":"","task_id":"{task_id}",'
        f'"event":"result-generated"}},"payload":{{"output":{{"sentence":{{'
        f'"begin_time":{begin},"end_time":{end},"text":"frame {seq}","sentence_end":false}}}}}}}}'
    ).encode()


def finished_event(task_id: str) -> bytes:
    """`task-finished` (AOG's envelope, empty payload)."""
    return (f'{{"header":{{"action":"","streaming":"","task_id":"{task_id}",'
            f'"event":"task-finished"}},"payload":{{}}}}').encode()
