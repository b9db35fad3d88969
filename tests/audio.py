"""Real-speech fixtures for speech tests: recorded and synthesised PCM plus a WER metric.

Tests use real audio rather than tones because recognisers only behave realistically on
speech. Both sources are Debian packages (``pocketsphinx-testdata`` for a human recording,
``flite`` for synthesis); when one is missing the helper skips the test with a hint instead
of failing, since the project code is not at fault.
"""

from __future__ import annotations

import array
import io
import os
import shutil
import string
import subprocess
import sys
import tempfile
import wave

import pytest

GOFORWARD_RAW = "/usr/share/pocketsphinx/test/data/goforward.raw"
GOFORWARD_TEXT = "go forward ten meters"
RATE = 16000
_SYSDEPS_HINT = "run `make sysdeps` to install the Debian packages flite and pocketsphinx-testdata"


def goforward_pcm() -> bytes:
    """Human recording "go forward ten meters": raw 16 kHz PCM16LE mono, ~2.8 s."""
    if not os.path.exists(GOFORWARD_RAW):
        pytest.skip(f"{GOFORWARD_RAW} is missing; {_SYSDEPS_HINT}")
    with open(GOFORWARD_RAW, "rb") as f:
        return f.read()


def flite_pcm(text: str) -> bytes:
    """Synthesise ``text`` with flite's ``slt`` voice as 16 kHz PCM16LE mono.

    flite's slt voice writes 16 kHz mono 16-bit WAV, which is used as is; the resampling
    branch only guards against a different flite build or voice.
    """
    flite = shutil.which("flite")
    if flite is None:
        pytest.skip(f"the flite binary is missing; {_SYSDEPS_HINT}")
    fd, path = tempfile.mkstemp(suffix=".wav", prefix="flite-")
    os.close(fd)
    try:
        subprocess.run(
            [flite, "-voice", "slt", "-t", text, "-o", path],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with wave.open(path, "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            data = w.readframes(w.getnframes())
    finally:
        os.unlink(path)
    if width != 2:
        raise AssertionError(f"flite wrote {8 * width}-bit audio, expected 16-bit")
    samples = array.array("h", data)
    if sys.byteorder == "big":  # WAV data is little-endian
        samples.byteswap()
    if channels > 1:
        samples = array.array("h", samples[::channels])
    if rate != RATE:
        samples = resample_linear(samples, rate, RATE)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def resample_linear(samples: array.array[int], src_rate: int, dst_rate: int) -> array.array[int]:
    """Plain linear-interpolation resampler: good enough for test speech, needs no numpy."""
    if not samples:
        return array.array("h")
    n_out = len(samples) * dst_rate // src_rate
    last = len(samples) - 1
    out = array.array("h", bytes(2 * n_out))
    step = src_rate / dst_rate
    for i in range(n_out):
        pos = i * step
        j = int(pos)
        if j >= last:
            out[i] = samples[last]
            continue
        frac = pos - j
        out[i] = round(samples[j] + (samples[j + 1] - samples[j]) * frac)
    return out


def wav_bytes(pcm: bytes, rate: int = RATE) -> bytes:
    """PCM16 mono wrapped in a WAV header, as apps upload speech."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def silence(ms: int, rate: int = RATE) -> bytes:
    """Digital silence (zero samples) of the given length."""
    return bytes(rate * ms // 1000 * 2)


def frames(pcm: bytes, ms: int, rate: int = RATE) -> list[bytes]:
    """Cut PCM16 mono into ``ms``-long chunks, the last one possibly shorter."""
    size = rate * ms // 1000 * 2
    if size <= 0:
        raise ValueError("frame length must be at least one sample")
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


_STRIP_PUNCT = str.maketrans("", "", string.punctuation.replace("'", ""))


def _words(text: str) -> list[str]:
    return text.lower().translate(_STRIP_PUNCT).split()


def word_error_rate(ref: str, hyp: str) -> float:
    """Word-level Levenshtein distance divided by the reference length.

    Case and punctuation (apart from apostrophes inside words such as "don't") are ignored.
    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    r, h = _words(ref), _words(hyp)
    if not r:
        return 0.0 if not h else 1.0
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i]
        for j, hw in enumerate(h, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw)))
        prev = cur
    return prev[-1] / len(r)
