"""Helpers for OpenAI's audio front doors: multipart forms, transcript formats, WAV errors.

OpenAI's `/v1/audio/transcriptions` takes `multipart/form-data`, which no other
front door does; the parser here is a plain boundary split over the bytes already
read (and size-limited) by the front door, so it adds no dependency and never
touches the disk. Errors are `GatewayError`s with a message saying what was wrong
with the form, so the OpenAI client raises `BadRequestError` with that text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value

from aogstream import errors
from aogstream.engines import pcm

MAX_FORM_PARTS = 64  # OpenAI's form has ~8 fields; more is abuse, not a client
MAX_BOUNDARY = 200  # RFC 2046 allows 70; be lenient, but bounded


@dataclass(frozen=True)
class FormPart:
    """One field of a multipart form: a text value or an uploaded file."""

    name: str
    filename: str | None
    content_type: str
    data: bytes

    def text(self) -> str:
        """The field as text (form values are UTF-8), or a 400 naming the field."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"form field {self.name!r} is not UTF-8 text") from None


def bad(message: str) -> errors.GatewayError:
    """A 400 about the request (the OpenAI client raises BadRequestError)."""
    return errors.GatewayError(errors.BAD_REQUEST, message)


def _param(msg: Message, name: str, header: str) -> str | None:
    value = msg.get_param(name, header=header)
    if value is None:
        return None
    return str(collapse_rfc2231_value(value))


def _part_headers(raw: bytes) -> tuple[str | None, str | None, str]:
    """(field name, filename, content type) from a part's header block."""
    disposition = ""
    ctype = ""
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            if line.strip():
                raise bad(f"malformed multipart part header {line[:80]!r}: expected "
                          "'Name: value'")
            continue
        key = key.strip().lower()
        if key == "content-disposition":
            disposition = value.strip()
        elif key == "content-type":
            ctype = value.strip()
    if not disposition:
        return None, None, ctype
    msg = Message()
    msg["content-disposition"] = disposition
    if msg.get_content_disposition() != "form-data":
        raise bad(f"a multipart part has Content-Disposition {disposition[:80]!r}; form "
                  "fields must be 'form-data; name=\"...\"'")
    name = _param(msg, "name", "content-disposition")
    filename = msg.get_filename()
    return name, filename, ctype


def parse_form(body: bytes, content_type: str) -> dict[str, FormPart]:
    """The fields of a `multipart/form-data` body (the first of a repeated name wins).

    A plain boundary split (RFC 7578 / RFC 2046): find each `--boundary` line, read the
    part's headers up to the blank line, take the bytes up to the next CRLF-boundary."""
    msg = Message()
    msg["content-type"] = content_type or "text/plain"
    if not content_type or msg.get_content_type() != "multipart/form-data":
        raise bad(f"send the request as multipart/form-data with the audio in a 'file' "
                  f"field (Content-Type was {content_type or 'missing'!r})")
    boundary = _param(msg, "boundary", "content-type")
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise bad("the multipart/form-data Content-Type has no usable boundary parameter")
    delim = b"--" + boundary.encode("latin-1", "replace")
    sep = b"\r\n" + delim
    if body.startswith(delim):
        pos = 0
    else:  # a preamble before the first boundary is allowed (and ignored)
        pos = body.find(sep)
        if pos < 0:
            raise bad("malformed multipart body: the boundary from Content-Type never "
                      "appears in it")
        pos += 2
    parts: dict[str, FormPart] = {}
    count = 0
    while True:
        pos += len(delim)
        if body.startswith(b"--", pos):
            return parts  # the closing delimiter; an epilogue after it is ignored
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise bad("malformed multipart body: a boundary line does not end with CRLF "
                      "(was the upload cut short?)")
        head_end = body.find(b"\r\n\r\n", eol)
        if head_end < 0:
            raise bad("malformed multipart body: a part's headers do not end with a "
                      "blank line")
        name, filename, ctype = _part_headers(body[eol + 2:head_end])
        start = head_end + 4
        end = body.find(sep, start)
        if end < 0:
            raise bad("malformed multipart body: the closing boundary is missing (was "
                      "the upload cut short?)")
        count += 1
        if count > MAX_FORM_PARTS:
            raise bad(f"the form has more than {MAX_FORM_PARTS} fields")
        if not name:
            raise bad("a multipart part has no Content-Disposition name; every field "
                      "needs 'Content-Disposition: form-data; name=\"...\"'")
        parts.setdefault(name, FormPart(name, filename, ctype, body[start:end]))
        pos = end + 2


# ---- transcripts ------------------------------------------------------------------------

def _clock(seconds: float, comma: bool) -> str:
    """"HH:MM:SS,mmm" (SRT) or "HH:MM:SS.mmm" (WebVTT)."""
    ms = max(0, round(float(seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    mi, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{mi:02d}:{s:02d}{',' if comma else '.'}{ms:03d}"


def _seconds(value: object) -> float:
    """A time in seconds from a transcript field; 0 when it is missing or no number (a
    provider's odd field costs a cue its time, never the answer)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def _cues(verbose: Mapping[str, object]) -> list[tuple[float, float, str]]:
    """(start, end, text) per segment; the whole text as one cue when there are none."""
    cues = []
    segments = verbose.get("segments")
    for seg in segments if isinstance(segments, list) else []:
        if not isinstance(seg, dict):
            continue
        text = str(seg.get("text") or "").strip()
        if text:
            cues.append((_seconds(seg.get("start")), _seconds(seg.get("end")), text))
    whole = str(verbose.get("text") or "").strip()
    if not cues and whole:
        cues.append((0.0, _seconds(verbose.get("duration")), whole))
    return cues


def srt(verbose: Mapping[str, object]) -> str:
    """SubRip subtitles from OpenAI's verbose_json transcript."""
    return "".join(f"{i}\n{_clock(a, True)} --> {_clock(b, True)}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(_cues(verbose), 1))


def vtt(verbose: Mapping[str, object]) -> str:
    """WebVTT subtitles from OpenAI's verbose_json transcript."""
    return "WEBVTT\n\n" + "".join(f"{_clock(a, False)} --> {_clock(b, False)}\n{text}\n\n"
                                  for a, b, text in _cues(verbose))


# ---- speech ----------------------------------------------------------------------------

def wav_pcm(data: bytes) -> tuple[bytes, int]:
    """(PCM16 mono little-endian, sample rate) of a WAV file, or a 502: the provider's
    answer is not audio this door can convert."""
    try:
        return pcm.wav_to_mono_pcm16(data)
    except pcm.SampleWidthError as exc:
        raise errors.GatewayError(errors.INVOKE_FAILED,
                                  f"the text-to-speech provider answered {exc.bits}-bit "
                                  "audio; only 16-bit WAV can be converted to pcm") from None
    except pcm.WavError as exc:
        raise errors.GatewayError(errors.INVOKE_FAILED,
                                  f"the text-to-speech provider answered audio that is not "
                                  f"a readable WAV file ({exc})") from None
