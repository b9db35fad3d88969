"""The PCM16/WAV codec (`aogstream.engines.pcm`) that the doors, the CLI and the plugins share.

Real parts: the module itself, and Python's `wave` as the reference WAV writer and reader
(what every WAV this project wrote before came from). Nothing runs but pure functions on
bytes. Proven: a packed WAV is byte for byte what `wave` writes (even and odd data sizes,
mono and stereo) and reads back; reading takes the first channel of a stereo file and
refuses other sample widths and non-WAV bytes with errors that say which; sniffing knows
a WAV by its RIFF/WAVE header only; samples convert little-endian both ways without
touching the caller's array; resampling keeps the length ratio, hits the source samples
where the grids meet and interpolates between them, and passes equal rates through as the
same object; the stream upsampler doubles the rate with midpoints that continue across
chunk boundaries, exactly as one whole-stream call does.
"""

from __future__ import annotations

import array
import io
import itertools
import wave

import pytest

from aogstream.engines import pcm


def wave_module_wav(frames: bytes, rate: int, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def le(*values: int) -> bytes:
    return b"".join(v.to_bytes(2, "little", signed=True) for v in values)


@pytest.mark.parametrize(("frames", "rate", "channels"), [
    (le(0, 1, -1, 32767, -32768), 22050, 1),
    (b"", 16000, 1),
    (le(1, 2, 3, 4, 5, 6), 48000, 2),
    (le(7, 8) + b"\x09", 8000, 1),  # a stray odd byte is kept, as wave does
])
def test_a_packed_wav_is_the_bytes_the_wave_module_writes(frames: bytes, rate: int,
                                                          channels: int) -> None:
    packed = pcm.pack_wav(frames, rate, channels)
    assert packed == wave_module_wav(frames, rate, channels)
    assert packed[:pcm.WAV_HEADER_SIZE] == pcm.wav_header(len(frames), rate, channels)
    wav = pcm.read_wav(packed)
    assert (wav.channels, wav.sample_width, wav.rate) == (channels, 2, rate)
    assert wav.frames == frames[: len(frames) // (2 * channels) * 2 * channels]


def test_reading_a_wav_gives_mono_pcm16_of_the_first_channel() -> None:
    mono = le(10, -20, 30)
    assert pcm.wav_to_mono_pcm16(wave_module_wav(mono, 24000)) == (mono, 24000)
    stereo = le(1, 100, 2, 200, 3, 300)
    assert pcm.wav_to_mono_pcm16(wave_module_wav(stereo, 16000, 2)) == (le(1, 2, 3), 16000)


def test_other_sample_widths_and_non_wav_bytes_are_refused_with_the_reason() -> None:
    with pytest.raises(pcm.SampleWidthError) as width:
        pcm.wav_to_mono_pcm16(wave_module_wav(b"\x80" * 10, 16000, width=1))
    assert width.value.bits == 8 and "8-bit" in str(width.value)
    assert isinstance(width.value, pcm.WavError)  # one except clause catches both
    for junk in (b"", b"RIFF", b"RIFF\x00\x00\x00\x00WAVEjunk", b"ID3\x03" + bytes(40)):
        with pytest.raises(pcm.WavError):
            pcm.read_wav(junk)


def test_a_wav_is_known_by_its_riff_wave_header() -> None:
    assert pcm.is_wav(pcm.pack_wav(le(1), 16000))
    assert pcm.is_wav(b"RIFF\x24\x00\x00\x00WAVE")
    for other in (b"", b"RIFF", b"RIFF\x24\x00\x00\x00AVI ", b"OggS" + bytes(12),
                  b"fLaC" + bytes(12)):
        assert not pcm.is_wav(other)


def test_samples_convert_little_endian_both_ways() -> None:
    raw = le(0, 1, -1, 256, -32768, 32767)
    arr = pcm.samples(raw)
    assert list(arr) == [0, 1, -1, 256, -32768, 32767]
    copy = array.array("h", arr)
    assert pcm.to_bytes(arr) == raw
    assert arr == copy  # the caller's array is not byte-swapped behind its back


def test_resampling_keeps_the_ratio_and_interpolates_linearly() -> None:
    src = le(*range(0, 22050, 10))
    out = pcm.resample(src, 22050, 24000)
    assert len(out) // 2 == (len(src) // 2) * 24000 // 22050
    assert pcm.resample(src, 24000, 24000) is src
    assert pcm.resample(b"", 16000, 24000) == b""
    # 2x up: the source samples stand at even places, midpoints (rounded) between them,
    # and the last sample repeats where there is nothing to interpolate towards
    assert list(pcm.samples(pcm.resample(le(0, 10, 21), 8000, 16000))) == \
        [0, 5, 10, 16, 21, 21]
    # 2x down: every other sample; an odd trailing byte is dropped first
    assert pcm.resample(le(1, 2, 3, 4) + b"\x07", 16000, 8000) == le(1, 3)


def test_the_stream_upsampler_doubles_the_rate_across_chunk_boundaries() -> None:
    src = [0, 100, -100, 50, 3, 4, 32767, -32768]
    whole = pcm.Upsampler2x().process(le(*src))
    assert list(pcm.samples(whole)) == [0, 0, 50, 100, 0, -100, -25, 50, 26, 3, 3, 4,
                                        16385, 32767, -1, -32768]
    for cut in range(1, len(src)):
        up = pcm.Upsampler2x()
        pieces = up.process(le(*src[:cut])) + up.process(b"") + up.process(le(*src[cut:]))
        assert pieces == whole, cut


def test_the_stream_upsampler_matches_a_whole_call_for_any_chunking() -> None:
    src = le(*[(i * 7919) % 65536 - 32768 for i in range(64)])
    whole = pcm.Upsampler2x().process(src)
    for size in (2, 6, 32, 126):
        up = pcm.Upsampler2x()
        chunks = [src[i:i + size] for i in range(0, len(src), size)]
        assert b"".join(up.process(c) for c in chunks) == whole, size
    assert len(whole) == 2 * len(src)
    assert list(itertools.islice(pcm.samples(whole), 1, None, 2)) == list(pcm.samples(src))
