"""Streaming speech recognition over pocketsphinx 5.1.1 with voice-activity sentence splitting.

Why it is built this way
------------------------
* pocketsphinx's ``Endpointer`` (a WebRTC-style VAD with a 0.3 s decision window) decides
  where utterances start and end, and only the speech it returns reaches the ``Decoder``.
  That gives one final event per sentence with stream-relative times, and silence costs
  almost nothing (the VAD is cheap, the search is not).
* Speech is handed to the decoder in batches of about ``partial_interval_ms`` of audio and the
  hypothesis is read once per batch, so partials come at most that often and the Python
  overhead per 20 ms frame stays tiny.
* The decoder is initialised with the cepstral mean that pocketsphinx's own en-us examples
  and tests use. The bundled model's default (``40,3,-1``) is far from real speech, and with
  live CMN a short first utterance never recovers from it: on ``goforward.raw`` the default
  gives "go forward ten years", the tuned mean gives "go forward ten meters"; over 9
  utterances (goforward, 5 LibriVox clips from ``pocketsphinx-testdata``, 3 flite sentences),
  each on a fresh decoder, the mean word error rate dropped from 0.39 to 0.30.
* The bundled acoustic model is wideband. 16, 32 and 48 kHz input are decoded natively; the
  front end cannot be configured for 8 kHz with this model (its ``feat.params`` pins the
  upper filter at 6800 Hz), so 8 kHz input is upsampled 2x by linear interpolation (the
  engine toolkit's ``aogstream.engines.pcm.Upsampler2x``). Telephone audio has no energy
  above 4 kHz anyway; ``goforward.raw`` taken down to 8 kHz and back is still recognised
  exactly.
* ``rescore_finals=True`` re-decodes each finished utterance in one batch with utterance-level
  CMN. That lowered the mean WER on the same 9 utterances from 0.30 to 0.19, but the final
  then waits for a second pass over the whole utterance (another 0.15-0.25 s of CPU per
  second of speech, all spent when the utterance ends), so it is off by default.

Concurrency
-----------
There is no module-level state and every instance owns its ``Decoder`` and ``Endpointer``
(pocketsphinx's log level is process-global, so it is left alone). Drive an instance from
worker threads, e.g. ``await asyncio.to_thread(rec.feed, chunk)``. Its public calls take a
per-instance lock: when a task is cancelled while its ``to_thread(feed)`` keeps running, a
``close()`` from the event loop waits for it instead of touching the decoder concurrently
(which would corrupt native state). Construction loads the model (~0.3 s), so build it off
the event loop as well.
pocketsphinx 5.1.1 holds the GIL inside ``process_raw``: worker threads do not run decoding
in parallel with Python code, and each batch can stall the event loop for its decoding time
(~20-25 ms per 100 ms of speech). If the host must stay responsive under load, run the
recogniser in a separate process. After ``finish()`` the instance is reset and can serve the
next stream, which keeps the model loaded and the adapted cepstral mean warm; ``restart()``
resets it to a fresh instance's state (for a decoder shared by sessions of different
clients, one after another) and ``release()`` frees the model at once.

Measured cost (this machine: 2 shared cores, Python 3.13, 16 kHz input, CPU time)
---------------------------------------------------------------------------------
* ~0.16-0.23 s of CPU per second of audio containing speech (real-time factor ~0.2 on one
  core): 0.57 s for the 2.8 s ``goforward.raw`` fed as 20 ms frames on a fresh instance
  (0.16-0.19 s/s on a warm one), 1.07 s for 6.5 s of two flite sentences with 1 s of
  silence fed as 100 ms frames, 0.23 s/s for 8 kHz input (upsampling included).
  ``rescore_finals=True`` roughly doubles it (0.30-0.48 s/s).
* ~0.0003 s of CPU per second of silence or low noise (only the VAD runs).
* Model load 0.3-0.5 s of CPU and ~90 MB of RSS per instance.

Model and engine
----------------
The model is a folder (pulled from the pocketsphinx wheel by the plugin, or any folder of the
same kind): :meth:`ModelPaths.from_folder` finds its acoustic model (the folder holding
``mdef``), language model (``*.lm.bin``) and dictionary (``*.dict``). ``pocketsphinx`` itself
is imported only when the first recogniser is built, so a process can import this module
(and put the engine's site-packages on ``sys.path``) before the engine is installed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aogstream.engines.pcm import Upsampler2x

__all__ = ["SUPPORTED_RATES", "Event", "ModelPaths", "StreamingRecognizer"]

SUPPORTED_RATES: tuple[int, ...] = (8000, 16000, 32000, 48000)
"""Input sample rates accepted by :class:`StreamingRecognizer` (PCM16LE mono)."""

# Cepstral mean used by pocketsphinx's own en-us examples/tests; see the module docstring.
_EN_US_CMNINIT = "41.00,-5.29,-0.12,5.09,2.48,-4.07,-1.37,-1.78,-5.08,-2.05,-6.45,-1.42,1.17"
_BYTES_PER_SAMPLE = 2


@dataclass(frozen=True, slots=True)
class Event:
    """One recognition result; times are milliseconds from the start of the stream.

    Partials (``final=False``) may be revised by later events of the same utterance; a final
    closes the utterance and its text will not change.
    """

    text: str
    begin_ms: int
    end_ms: int
    final: bool


@dataclass(frozen=True, slots=True)
class ModelPaths:
    """The three parts pocketsphinx loads: acoustic model folder, language model, dictionary."""

    hmm: str
    lm: str
    dict: str

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelPaths:
        """Find the parts inside a model folder, whatever its layout.

        The wheel's layout (``en-us/en-us/mdef``, ``en-us/en-us.lm.bin``,
        ``en-us/cmudict-en-us.dict``) is found as well as a flat one; the phone-loop LM
        (``*-phone.lm.bin``) that ships beside the word LM is not a word LM and is skipped.
        Raises ``ValueError`` naming what is missing.
        """
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"model folder {root} does not exist")
        mdefs = sorted(root.rglob("mdef"))
        lms = [p for p in sorted(root.rglob("*.lm.bin")) if "phone" not in p.name]
        dicts = sorted(root.rglob("*.dict"))
        missing = [what for what, found in (("an acoustic model (a folder with mdef)", mdefs),
                                            ("a word language model (*.lm.bin)", lms),
                                            ("a pronunciation dictionary (*.dict)", dicts))
                   if not found]
        if missing:
            raise ValueError(f"model folder {root} has no {' and no '.join(missing)}")
        return cls(hmm=str(mdefs[0].parent), lm=str(lms[0]), dict=str(dicts[0]))


def _engine() -> Any:
    """The pocketsphinx module, imported on first use (see "Model and engine")."""
    import pocketsphinx

    return pocketsphinx


class StreamingRecognizer:
    """Incremental recogniser for one audio stream of raw PCM16LE mono.

    ``feed`` accepts chunks of any size (an odd trailing byte is kept for the next call) and
    returns the events the new audio produced; ``finish`` ends the stream, returns the final
    event of an utterance still open, and resets the instance for another stream.

    ``model`` names the model's parts (see :class:`ModelPaths`); without it pocketsphinx's
    own bundled en-us model is used. A model that does not load raises ``RuntimeError``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        *,
        model: ModelPaths | None = None,
        partial_interval_ms: int = 100,
        rescore_finals: bool = False,
    ) -> None:
        if sample_rate not in SUPPORTED_RATES:
            rates = ", ".join(str(r) for r in SUPPORTED_RATES)
            raise ValueError(
                f"unsupported sample rate {sample_rate} Hz; pocketsphinx with the bundled "
                f"en-us model supports {rates} Hz (PCM16LE mono)"
            )
        if partial_interval_ms <= 0:
            raise ValueError("partial_interval_ms must be positive")
        self.sample_rate = sample_rate
        self.rescore_finals = rescore_finals
        # 8 kHz is decoded as upsampled 16 kHz; every other supported rate natively.
        self._decode_rate = 16000 if sample_rate == 8000 else sample_rate
        ps = _engine()
        self._endpointer_type = ps.Endpointer
        paths = {} if model is None else {"hmm": model.hmm, "lm": model.lm, "dict": model.dict}
        self._decoder: Any = ps.Decoder(samprate=self._decode_rate, cmninit=_EN_US_CMNINIT, **paths)
        self._bytes_per_ms = self._decode_rate * _BYTES_PER_SAMPLE // 1000
        self._batch_bytes = partial_interval_ms * self._bytes_per_ms
        self._lock = threading.Lock()
        self._reset_stream()

    def _reset_stream(self) -> None:
        """Per-stream state; the decoder (model and adapted CMN) outlives streams.

        The endpointer is replaced only when the stream gave it audio: pocketsphinx
        5.1.1 does not free all of an ``Endpointer``'s native memory (~18 KB each), so
        resetting an untouched stream twice (finish, then a pool's restart) must not
        cost two of them.
        """
        if getattr(self, "_ep_used", True):
            self._endpointer = self._endpointer_type(sample_rate=self._decode_rate)
            self._frame_bytes: int = self._endpointer.frame_bytes
        self._ep_used = False
        self._upsampler = Upsampler2x() if self.sample_rate == 8000 else None
        self._odd = b""  # a lone trailing byte of the caller's input
        self._pending = bytearray()  # decode-rate audio not yet a full VAD frame
        self._in_utt = False
        self._utt_begin_ms = 0
        self._utt_decoded_bytes = 0
        self._batch = bytearray()  # speech not yet given to the decoder
        self._utt_audio = bytearray()  # whole utterance, kept only for rescoring
        self._last_partial = ""

    def feed(self, pcm: bytes) -> list[Event]:
        """Add audio and return the partial/final events it produced (often none)."""
        with self._lock:
            self._live_decoder()
            return self._feed(pcm)

    def finish(self) -> list[Event]:
        """End the stream: return the final event of an open utterance, then reset.

        An utterance that produced no words yields nothing, so silence-only or noise-only
        streams return an empty list.
        """
        with self._lock:
            self._live_decoder()
            events: list[Event] = []
            if self._in_utt:
                # end_stream() flushes the VAD window (~0.3 s of held-back speech) but
                # rejects an empty buffer, so a frame-aligned stream ends with one zero sample.
                tail = self._endpointer.end_stream(bytes(self._pending) or bytes(2))
                if tail:
                    self._add_speech(tail, events, check_partial=False)
                self._end_utterance(events)
            self._reset_stream()
            return events

    def close(self) -> None:
        """Abandon the current stream without producing events (e.g. client went away)."""
        with self._lock:
            self._abandon()

    def restart(self) -> None:
        """Abandon the current stream and forget everything it adapted to.

        The next stream decodes exactly as on a freshly built instance (the cepstral mean
        goes back to its initial value), for ~0.1 ms instead of a ~0.3 s model load: this
        is what lets a pool hand one decoder to many sessions, one after another, without
        one client's audio shaping another's results.
        """
        with self._lock:
            self._abandon()
            self._live_decoder().reinit_feat()

    def release(self) -> None:
        """Free the decoder (the model, ~50-90 MB of native memory) now.

        Dropping the last reference would do the same, but a reference can outlive the
        session by a long time (a finished future's result caught in a reference cycle,
        a traceback), and the native memory is invisible to Python's collector. After
        this the instance cannot decode any more.
        """
        with self._lock:
            if self._decoder is not None:
                self._abandon()
            self._decoder = None

    # -- internals --------------------------------------------------------------------------

    def _live_decoder(self) -> Any:
        if self._decoder is None:
            raise RuntimeError("this recogniser was released; build a new one")
        return self._decoder

    def _abandon(self) -> None:
        if self._in_utt:
            self._live_decoder().end_utt()
        self._reset_stream()

    def _feed(self, pcm: bytes) -> list[Event]:
        """Re-chunk arbitrary input into the endpointer's fixed-size frames."""
        if self._odd:
            pcm = self._odd + pcm
            self._odd = b""
        if len(pcm) % _BYTES_PER_SAMPLE:
            self._odd = pcm[-1:]
            pcm = pcm[:-1]
        if not pcm:
            return []
        if self._upsampler is not None:
            pcm = self._upsampler.process(pcm)
        self._ep_used = True
        self._pending += pcm
        events: list[Event] = []
        frame_bytes = self._frame_bytes
        n_full = len(self._pending) // frame_bytes * frame_bytes
        view = memoryview(self._pending)
        try:
            for start in range(0, n_full, frame_bytes):
                self._vad_frame(bytes(view[start : start + frame_bytes]), events)
        finally:
            view.release()
        del self._pending[:n_full]
        return events

    def _vad_frame(self, frame: bytes, events: list[Event]) -> None:
        """Run one VAD frame through the endpointer and act on speech transitions."""
        ep = self._endpointer
        speech = ep.process(frame)
        if speech is not None:
            if not self._in_utt:
                self._start_utterance(round(ep.speech_start * 1000))
            self._add_speech(speech, events, check_partial=True)
        if self._in_utt and not ep.in_speech:
            self._end_utterance(events)

    def _start_utterance(self, begin_ms: int) -> None:
        """Open a decoder utterance; times stay stream-relative, not utterance-relative."""
        self._decoder.start_utt()
        self._in_utt = True
        self._utt_begin_ms = begin_ms
        self._utt_decoded_bytes = 0
        self._last_partial = ""

    def _add_speech(self, speech: bytes, events: list[Event], *, check_partial: bool) -> None:
        """Queue speech and decode it once a batch is full (that is the partial throttle)."""
        self._batch += speech
        if self.rescore_finals:
            self._utt_audio += speech
        if check_partial and len(self._batch) >= self._batch_bytes:
            self._decode_batch()
            text = self._hyp_text()
            if text and text != self._last_partial:
                self._last_partial = text
                end_ms = self._utt_begin_ms + self._utt_decoded_bytes // self._bytes_per_ms
                events.append(Event(text, self._utt_begin_ms, end_ms, final=False))

    def _decode_batch(self) -> None:
        """Search the queued speech; batching is what keeps per-frame overhead low."""
        if self._batch:
            self._decoder.process_raw(bytes(self._batch), False, False)
            self._utt_decoded_bytes += len(self._batch)
            self._batch.clear()

    def _end_utterance(self, events: list[Event]) -> None:
        """Close the utterance and emit its final, unless nothing was recognised."""
        self._decode_batch()
        self._decoder.end_utt()
        if self.rescore_finals and self._utt_audio:
            # Second pass over the whole utterance with utterance-level normalisation.
            self._decoder.start_utt()
            self._decoder.process_raw(bytes(self._utt_audio), False, True)
            self._decoder.end_utt()
            self._utt_audio.clear()
        text = self._hyp_text()
        self._in_utt = False
        if text:
            end_ms = max(round(self._endpointer.speech_end * 1000), self._utt_begin_ms)
            events.append(Event(text, self._utt_begin_ms, end_ms, final=True))

    def _hyp_text(self) -> str:
        """Current best text; pocketsphinx returns no hypothesis before the first word."""
        hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""
