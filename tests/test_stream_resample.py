"""The realtime sockets' streaming resampler and G.711 decoder (`bidi.resample`), as a
unit: pure functions over bytes, no gateway.

Proven: the output does not depend on how the stream was cut into chunks (odd byte
counts included), 24 kHz → 16 kHz keeps a 1 kHz tone's level and suppresses an 11 kHz
tone (which a filterless decimator would fold to 5 kHz), 8 kHz → 16 kHz doubles the
length, and the G.711 tables decode the standard's reference values.
"""

from __future__ import annotations

import array
import math
import random

from aogstream.bidi.resample import StreamResampler, g711_to_pcm16


def tone(rate: int, hz: float, n: int, level: int = 10000) -> bytes:
    return array.array("h", [int(level * math.sin(2 * math.pi * hz * i / rate))
                             for i in range(n)]).tobytes()


def rms(pcm: bytes) -> float:
    s = array.array("h", pcm)[200:]
    return math.sqrt(sum(v * v for v in s) / len(s))


def test_output_is_the_same_however_the_stream_is_cut():
    pcm = tone(24000, 440, 24000) + tone(24000, 3000, 12001)[:-1]
    whole = StreamResampler(24000, 16000).feed(pcm)
    rs = StreamResampler(24000, 16000)
    rnd = random.Random(7)
    cut, i = b"", 0
    while i < len(pcm):
        n = rnd.randint(1, 4001)  # odd sizes split samples between chunks
        cut += rs.feed(pcm[i:i + n])
        i += n
    assert cut == whole
    assert len(whole) == 2 * 24000  # 36000 whole samples in, 2 out for every 3


def test_24k_to_16k_keeps_speech_band_and_filters_what_would_alias():
    kept = StreamResampler(24000, 16000).feed(tone(24000, 1000, 24000))
    assert abs(rms(kept) - 10000 / math.sqrt(2)) < 150
    aliased = StreamResampler(24000, 16000).feed(tone(24000, 11000, 24000))
    assert rms(aliased) < 500  # < -23 dB; unfiltered it would come through whole


def test_8k_to_16k_and_g711_reference_values():
    assert len(StreamResampler(8000, 16000).feed(bytes(320))) == 640
    assert g711_to_pcm16(bytes([0xFF, 0x7F, 0x00, 0x80]), "ulaw") == \
        array.array("h", [0, 0, -32124, 32124]).tobytes()
    assert g711_to_pcm16(bytes([0xD5, 0x55, 0x2A, 0xAA]), "alaw") == \
        array.array("h", [8, -8, -32256, 32256]).tobytes()
