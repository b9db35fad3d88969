"""PCM16 and WAV: the one codec for raw speech audio, used by the gateway and its plugins.

Speech crosses the gateway as 16-bit little-endian PCM, bare (realtime sockets, OpenAI's
`pcm`, streamed text-to-speech) or in a WAV file (uploads, text-to-speech answers). The
front doors convert a voice's WAV to OpenAI's 24 kHz `pcm`, the CLI plays a WAV into the
realtime socket at 16 kHz, the piper plugin wraps its voice's PCM in a WAV, and the
pocketsphinx plugin upsamples 8 kHz telephone audio for a wideband model. Each used to
carry its own WAV writer, reader or resampler; they are here once, so a WAV is packed and
read the same way everywhere and a resampling fix lands for every user.

Pure functions on `bytes` (and one small stateful upsampler for streams): no I/O, no
imports beyond the standard library, no knowledge of HTTP or plugins, so every layer may
import it (it sits in the engine toolkit because shipped plugins may import only the SDK
and the toolkit). Errors are `WavError`s; each caller says in its own words whose audio
was wrong. Samples are converted with `array` (C speed), never one `struct` call each; the
resampler's per-sample loop is the one exception, so callers on an event loop run it in a
worker thread.
"""

from __future__ import annotations

import array
import io
import struct
import sys
import wave
from dataclasses import dataclass

__all__ = ["SampleWidthError", "Upsampler2x", "Wav", "WavError", "is_wav", "pack_wav",
           "read_wav", "resample", "samples", "to_bytes", "wav_header", "wav_to_mono_pcm16"]

WAV_HEADER_SIZE = 44
"""Bytes of the canonical header `wav_header` writes (RIFF, `fmt `, `data` chunk heads)."""
_PCM_FORMAT = 1  # WAVE_FORMAT_PCM
_BIG_ENDIAN = sys.byteorder == "big"


class WavError(ValueError):
    """The bytes are not a WAV file this module can read."""


class SampleWidthError(WavError):
    """A readable WAV whose samples are not 16-bit (`bits` says what they are)."""

    def __init__(self, bits: int) -> None:
        super().__init__(f"{bits}-bit samples; only 16-bit PCM is supported")
        self.bits = bits


@dataclass(frozen=True, slots=True)
class Wav:
    """What a WAV file holds: its format and its interleaved sample frames."""

    channels: int
    sample_width: int  # bytes per sample: 2 for PCM16
    rate: int
    frames: bytes


def is_wav(data: bytes) -> bool:
    """Whether `data` starts like a WAV file (a RIFF container of WAVE form)."""
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def wav_header(data_size: int, rate: int, channels: int = 1) -> bytes:
    """The canonical 44-byte header of a PCM16 WAV whose sample data is `data_size`
    bytes, exactly as the standard library's `wave` writes it."""
    byte_rate = rate * channels * 2
    return b"".join((
        b"RIFF", struct.pack("<L", 36 + data_size), b"WAVE",
        b"fmt ", struct.pack("<LHHLLHH", 16, _PCM_FORMAT, channels, rate, byte_rate,
                             channels * 2, 16),
        b"data", struct.pack("<L", data_size),
    ))


def pack_wav(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    """A WAV file of PCM16 little-endian samples (interleaved when `channels` > 1).

    The bytes are the ones `wave` writes for the same samples (the header's sizes say
    what is there, even for a stray odd byte, which is kept), so a WAV is the same
    whoever packed it."""
    return wav_header(len(pcm), rate, channels) + pcm


def read_wav(data: bytes) -> Wav:
    """The format and sample frames of a WAV file, or `WavError` saying why it is not
    one (any sample width; `wav_to_mono_pcm16` when PCM16 is what you need)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            return Wav(w.getnchannels(), w.getsampwidth(), w.getframerate(),
                       w.readframes(w.getnframes()))
    except (wave.Error, EOFError) as exc:
        raise WavError(str(exc)) from None


def wav_to_mono_pcm16(data: bytes) -> tuple[bytes, int]:
    """(PCM16 mono little-endian, sample rate) of a WAV file: its first channel when it
    has several. `SampleWidthError` for samples of another width, `WavError` for bytes
    that are not a readable WAV."""
    wav = read_wav(data)
    if wav.sample_width != 2:
        raise SampleWidthError(8 * wav.sample_width)
    if wav.channels <= 1:
        return wav.frames, wav.rate
    # the first channel: every `channels`-th sample (byte order is kept as it is)
    return array.array("h", wav.frames)[::wav.channels].tobytes(), wav.rate


def samples(pcm: bytes) -> array.array[int]:
    """PCM16 little-endian bytes as signed 16-bit samples, whatever the host's byte
    order (`len(pcm)` must be even)."""
    arr = array.array("h", pcm)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


def to_bytes(arr: array.array[int]) -> bytes:
    """Signed 16-bit samples as PCM16 little-endian bytes (the inverse of `samples`);
    `arr` itself is left as it was."""
    if _BIG_ENDIAN:
        arr = array.array("h", arr)
        arr.byteswap()
    return arr.tobytes()


def resample(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """PCM16 mono from `src_rate` to `dst_rate` by linear interpolation (local voices
    speak at their own rate, e.g. 22.05 kHz; OpenAI's `pcm` is 24 kHz, realtime ASR
    16 kHz). The same bytes object when the rates match; an odd trailing byte is dropped."""
    if src_rate == dst_rate or not pcm:
        return pcm
    src = samples(pcm[: len(pcm) // 2 * 2])
    n_out = len(src) * dst_rate // src_rate
    last = len(src) - 1
    step = src_rate / dst_rate
    out = array.array("h", bytes(2 * n_out))
    for i in range(n_out):
        pos = i * step
        j = int(pos)
        if j >= last:
            out[i] = src[last]
        else:
            a = src[j]
            out[i] = round(a + (src[j + 1] - a) * (pos - j))
    return to_bytes(out)


class Upsampler2x:
    """Doubles the sample rate of a PCM16 mono stream by linear interpolation, keeping
    continuity across chunks.

    Each input sample is preceded by the midpoint between it and the previous one (of this
    chunk, or the last of the chunk before), so chunk boundaries produce no clicks; unlike
    `resample`, which sees a whole recording, it works on a stream piece by piece.
    """

    __slots__ = ("_prev",)

    def __init__(self) -> None:
        self._prev: int | None = None

    def process(self, pcm: bytes) -> bytes:
        """Upsample whole PCM16 samples (`len(pcm)` must be even)."""
        if not pcm:
            return b""
        src = samples(pcm)
        prev = src[0] if self._prev is None else self._prev
        out = array.array("h", bytes(len(pcm) * 2))
        out[1::2] = src
        shifted = array.array("h", [prev])
        shifted.extend(src[:-1])
        out[0::2] = array.array("h", [(a + b) >> 1 for a, b in zip(shifted, src, strict=True)])
        self._prev = src[-1]
        return to_bytes(out)
