"""Streaming PCM16 resampling and G.711 decoding for realtime sockets.

OpenAI's realtime audio arrives as PCM16 at 24 kHz (or G.711 at 8 kHz) in chunks of any
size, and the local speech engines take 16 kHz. A per-chunk resampler (such as the
whole-buffer `resample_pcm16` used for finished files) restarts its phase at every chunk
and drops the fractional tail, which clicks and drifts; this one keeps its phase, its
filter history and an odd trailing byte from one chunk to the next, so the output is the
same however the stream was cut.

It is a rational polyphase resampler (up by L, low-pass, down by M) with a short
Hann-windowed sinc: 24 kHz → 16 kHz is L=2, M=3, and the low-pass at ~7 kHz keeps the
8–12 kHz band from folding into speech. The arithmetic is integer (Q14 taps) and done a
filter column at a time over strided slices, so a 20 ms chunk costs tens of
microseconds in pure Python (no numpy in the gateway).
"""

from __future__ import annotations

import array
import math
import sys
from operator import add

_Q = 14
_HALF = (1 << (_Q - 1)).__add__  # + 0.5 in Q14, for rounding
_SHIFT = _Q.__rrshift__  # v >> 14
TAPS_PER_PHASE = 8


def _design(up: int, down: int, taps_per_phase: int) -> list[list[int]]:
    """Per-phase integer taps (Q14) of a windowed-sinc low-pass at the upsampled rate;
    each phase sums to 1.0 so a constant signal passes unchanged."""
    n = up * taps_per_phase
    cutoff = 0.45 / max(up, down)  # cycles per upsampled sample, a little under Nyquist
    centre = (n - 1) / 2
    h = []
    for k in range(n):
        x = k - centre
        sinc = 2 * cutoff if x == 0 else math.sin(2 * math.pi * cutoff * x) / (math.pi * x)
        window = 0.5 - 0.5 * math.cos(2 * math.pi * (k + 0.5) / n)
        h.append(sinc * window)
    phases = []
    for p in range(up):
        taps = h[p::up]
        total = sum(taps)
        q = [round(t / total * (1 << _Q)) for t in taps]
        q[len(q) // 2] += (1 << _Q) - sum(q)  # exact unity gain after rounding
        phases.append(q)
    return phases


class StreamResampler:
    """PCM16 little-endian mono from `src` Hz to `dst` Hz, fed chunk by chunk."""

    def __init__(self, src: int, dst: int) -> None:
        g = math.gcd(src, dst)
        self.up, self.down = dst // g, src // g
        self.passthrough = src == dst
        self.taps = _design(self.up, self.down, TAPS_PER_PHASE)
        # output n = up*p + r reads input base(p, r) = down*p + (r*down)//up at filter
        # phase (r*down) % up; the newest sample a phase reads is its base
        self.plan = [((r * self.down) // self.up, self.taps[(r * self.down) % self.up])
                     for r in range(self.up)]
        self.history = TAPS_PER_PHASE - 1
        self.buf = array.array("h", bytes(2 * self.history))  # silence before the start
        self.odd = b""

    def feed(self, pcm: bytes) -> bytes:
        """The resampled PCM16 for this chunk (may be empty while a group fills)."""
        if self.odd:
            pcm = self.odd + pcm
            self.odd = b""
        if len(pcm) % 2:
            pcm, self.odd = pcm[:-1], pcm[-1:]
        if self.passthrough:
            return pcm
        new = array.array("h", pcm)
        if sys.byteorder == "big":
            new.byteswap()
        buf = self.buf
        buf.extend(new)
        h, up, down = self.history, self.up, self.down
        reach = max(off for off, _ in self.plan)
        groups = (len(buf) - h - reach - 1) // down + 1 if len(buf) - h > reach else 0
        if groups <= 0:
            return b""
        outputs: list[list[int]] = []
        for off, taps in self.plan:
            acc: list[int] | None = None
            for i, c in enumerate(taps):
                start = h + off - i
                col = buf[start:start + down * (groups - 1) + 1:down]
                term = map(c.__mul__, col)
                acc = list(term) if acc is None else list(map(add, acc, term))
            outputs.append(acc or [])
        out = array.array("h", bytes(2 * up * groups))
        for r, acc in enumerate(outputs):
            # round and scale back from Q14 with C-level maps; clip (a Python loop)
            # only in the rare chunk that overshoots
            values = list(map(_SHIFT, map(_HALF, acc)))
            if values and (min(values) < -32768 or max(values) > 32767):
                values = [-32768 if v < -32768 else 32767 if v > 32767 else v
                          for v in values]
            out[r::up] = array.array("h", values)
        del buf[:down * groups]  # keep the history (and any partial group) for next time
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes()


def _ulaw(byte: int) -> int:
    u = ~byte & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -sample if sign else sample


def _alaw(byte: int) -> int:
    a = byte ^ 0x55
    sign, exponent, mantissa = a & 0x80, (a >> 4) & 0x07, a & 0x0F
    if exponent == 0:
        sample = (mantissa << 4) + 8
    else:
        sample = ((mantissa << 4) + 0x108) << (exponent - 1)
    return sample if sign else -sample


def _tables(decode: object) -> tuple[bytes, bytes]:
    values = [decode(b) & 0xFFFF for b in range(256)]  # type: ignore[operator]
    return bytes(v & 0xFF for v in values), bytes(v >> 8 for v in values)


_ULAW = _tables(_ulaw)
_ALAW = _tables(_alaw)


def g711_to_pcm16(data: bytes, law: str) -> bytes:
    """G.711 μ-law (`"ulaw"`) or A-law (`"alaw"`) bytes as PCM16 little-endian, at the
    same 8 kHz (two table lookups done by `bytes.translate`, no Python loop)."""
    lo_table, hi_table = _ULAW if law == "ulaw" else _ALAW
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(lo_table)
    out[1::2] = data.translate(hi_table)
    return bytes(out)
