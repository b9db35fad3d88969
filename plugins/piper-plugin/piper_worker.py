"""Engine process of piper-plugin: one Piper voice behind the worker kit's loopback HTTP.
Runs in the engine's own virtualenv (piper-tts, onnxruntime, numpy).

`/synthesize` `{text, speed?}` streams one NDJSON line per sentence as soon as that
sentence is spoken: `{index, text, sample_rate, audio_b64}` (PCM16 mono). Sentences are
cut here rather than left to espeak so each line carries the text it speaks; a piece
that espeak still splits further is merged back into one line.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Iterator
from typing import Any

from engine_worker import ClientError, base_args, serve
from piper import PiperVoice, SynthesisConfig

MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_TEXT_CHARS = 20000  # the plugin enforces a lower limit; this only guards the engine
# words whose trailing period does not end a sentence
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g",
                 "i.e", "fig", "approx", "inc", "ltd"}
SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: after . ! ? … followed by space (not after a known
    abbreviation or an initial), and at blank lines."""
    out: list[str] = []
    start = 0
    for match in SENTENCE_END.finditer(text):
        piece = text[start:match.end()].strip()
        last_word = piece.rsplit(None, 1)[-1].rstrip(".").lower() if piece else ""
        if piece.endswith(".") and (last_word in ABBREVIATIONS or
                                    (len(last_word) == 1 and last_word.isalpha())):
            continue  # "Dr. Smith", "J. R. R. Tolkien": keep going
        if piece:
            out.append(piece)
        start = match.end()
    rest = text[start:].strip()
    if rest:
        out.append(rest)
    return out


def main() -> None:
    args = base_args("Piper text-to-speech engine").parse_args()
    voice = PiperVoice.load(args.model, config_path=args.model + ".json")
    rate = int(voice.config.sample_rate)
    base_scale = float(voice.config.length_scale or 1.0)
    for _ in voice.synthesize("Ready."):  # warm up onnxruntime: the first run is slow
        pass

    def synthesize(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        # Validated before the stream starts, so a bad request is an HTTP 400 rather
        # than an error line in the middle of a 200 stream.
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ClientError("'text' must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise ClientError(f"'text' is longer than {MAX_TEXT_CHARS} characters")
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) \
                or not MIN_SPEED <= speed <= MAX_SPEED:
            raise ClientError(f"'speed' must be a number from {MIN_SPEED} to {MAX_SPEED}")
        # speed 2.0 = twice as fast = each phoneme half as long
        config = SynthesisConfig(length_scale=base_scale / float(speed))
        return _sentences(split_sentences(text), config)

    def _sentences(pieces: list[str], config: SynthesisConfig) -> Iterator[dict[str, Any]]:
        index = 0
        for piece in pieces:
            pcm = b"".join(chunk.audio_int16_bytes
                           for chunk in voice.synthesize(piece, config))
            if not pcm:
                continue  # only punctuation or symbols: nothing to say
            yield {"index": index, "text": piece, "sample_rate": rate,
                   "audio_b64": base64.b64encode(pcm).decode()}
            index += 1

    print(f"piper voice {args.name} loaded ({rate} Hz)", file=sys.stderr, flush=True)
    serve({"/synthesize": synthesize}, port=args.port,
          info={"model": args.name, "sample_rate": rate})


if __name__ == "__main__":
    main()
