"""Tests for the pocketsphinx plugin's streaming recogniser, on real speech.

The recogniser runs in this test process on the engine the plugin installed and the model
it pulled, in the test engine directory (`require_engines`): pocketsphinx is imported from
the engine's virtualenv and the model's parts come from the pulled model folder. The plugin
folder is not a package of the project (plugins ship separately), so it is put on
``sys.path`` here. Inputs are a human recording and flite speech; see ``tests/audio.py``.
"""

from __future__ import annotations

import array
import asyncio
import importlib.util
import itertools
import os
import sys
from functools import partial
from pathlib import Path

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.join(_HERE, "..", "plugins", "pocketsphinx-plugin"), _HERE):
    _path = os.path.normpath(_path)
    if _path not in sys.path:
        sys.path.insert(0, _path)

from audio import (  # noqa: E402
    GOFORWARD_TEXT,
    flite_pcm,
    frames,
    goforward_pcm,
    resample_linear,
    silence,
    word_error_rate,
)
from conftest import require_engines  # noqa: E402
from pocketsphinx_plugin.recognizer import (  # noqa: E402
    SUPPORTED_RATES,
    Event,
    ModelPaths,
    StreamingRecognizer,
)

PLUGIN = "pocketsphinx-plugin"
MODEL = "pocketsphinx-en-us"


def _engine_site_packages(root: Path) -> Path:
    found = sorted((root / PLUGIN / "engine" / "venv" / "lib").glob("python3*/site-packages"))
    assert found, f"no site-packages in the {PLUGIN} engine under {root}"
    return found[0]


def _import_engine(site: Path) -> object:
    """pocketsphinx from the installed engine, without putting the engine's whole
    site-packages in front of this process's packages (pocketsphinx imports nothing
    outside itself). If some other test already imported pocketsphinx, that one stays."""
    if "pocketsphinx" in sys.modules:
        return sys.modules["pocketsphinx"]
    pkg = site / "pocketsphinx"
    spec = importlib.util.spec_from_file_location(
        "pocketsphinx", pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pocketsphinx"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["pocketsphinx"]
        raise
    return module


@pytest.fixture(scope="module")
def model_dir() -> Path:
    root = require_engines([PLUGIN])
    _import_engine(_engine_site_packages(root))
    folder = root / PLUGIN / "models" / MODEL
    assert (folder / "model.json").exists(), (
        f"{MODEL} is not pulled in {root}; run `python -m aogstream engine install {PLUGIN} "
        f"--engine-dir {root}`")
    return folder


@pytest.fixture(scope="module")
def paths(model_dir) -> ModelPaths:
    return ModelPaths.from_folder(model_dir)


@pytest.fixture(scope="module")
def make(paths):
    """`StreamingRecognizer` on the pulled model."""
    return partial(StreamingRecognizer, model=paths)


SENTENCE_1 = "The quick brown fox jumps over the lazy dog."
SENTENCE_2 = "Please call me back tomorrow morning."


def run_stream(rec: StreamingRecognizer, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += rec.feed(chunk)
    return events + rec.finish()


def finals(events: list[Event]) -> list[Event]:
    return [e for e in events if e.final]


def final_text(events: list[Event]) -> str:
    return " ".join(e.text for e in finals(events))


@pytest.fixture(scope="module")
def recognizer(make) -> StreamingRecognizer:
    """One instance reused across tests: finish() resets it, and loading costs ~0.3 s."""
    return make()


@pytest.fixture(scope="module")
def two_sentences() -> bytes:
    return flite_pcm(SENTENCE_1) + silence(1000) + flite_pcm(SENTENCE_2)


def test_goforward_20ms_frames_partials_then_final(make):
    # A fresh instance: the first utterance of a cold decoder is the hard case.
    rec = make()
    events = run_stream(rec, frames(goforward_pcm(), 20))
    fin = finals(events)
    assert len(fin) == 1, events
    assert events[-1] is fin[0], "the final must come after every partial"
    partials = [e for e in events if not e.final]
    assert partials, "expected partial hypotheses before the final"
    assert all(p.text for p in partials)
    assert all(a.text != b.text for a, b in itertools.pairwise(partials))
    assert word_error_rate(GOFORWARD_TEXT, fin[0].text) <= 0.25, fin[0].text
    # The recording is 2.8 s with ~0.5 s of leading silence.
    assert 0 <= fin[0].begin_ms < fin[0].end_ms <= 2800


def test_partials_throttled_to_about_100ms_of_audio(recognizer):
    pcm = goforward_pcm()
    events = run_stream(recognizer, frames(pcm, 20))
    audio_ms = len(pcm) // 32
    assert len([e for e in events if not e.final]) <= audio_ms // 100


def test_two_sentences_give_two_finals_with_increasing_times(recognizer, two_sentences):
    events = run_stream(recognizer, frames(two_sentences, 100))
    fin = finals(events)
    assert len(fin) == 2, [(e.text, e.begin_ms, e.end_ms) for e in fin]
    first, second = fin
    assert 0 <= first.begin_ms < first.end_ms < second.begin_ms < second.end_ms
    assert second.end_ms <= len(two_sentences) // 32
    # The 1 s gap must sit between the two utterances.
    assert second.begin_ms - first.end_ms >= 500
    wer = word_error_rate(f"{SENTENCE_1} {SENTENCE_2}", final_text(events))
    assert wer <= 0.3, final_text(events)
    # Partials belong to an utterance that is still open.
    for e in events:
        if not e.final:
            assert any(f.begin_ms == e.begin_ms and e.end_ms <= f.end_ms + 100 for f in fin)


def test_odd_sized_chunks(recognizer):
    pcm = goforward_pcm()
    sizes = [1, 333, 641, 7, 1999, 3201, 2, 5]
    chunks, pos, k = [], 0, 0
    while pos < len(pcm):
        chunks.append(pcm[pos : pos + sizes[k % len(sizes)]])
        pos += sizes[k % len(sizes)]
        k += 1
    events = run_stream(recognizer, chunks)
    assert word_error_rate(GOFORWARD_TEXT, final_text(events)) <= 0.25, final_text(events)


def test_chunking_does_not_change_the_result(recognizer):
    pcm = goforward_pcm()
    by_20 = final_text(run_stream(recognizer, frames(pcm, 20)))
    by_100 = final_text(run_stream(recognizer, frames(pcm, 100)))
    whole = final_text(run_stream(recognizer, [pcm]))
    assert by_20 == by_100 == whole


def test_silence_only_gives_no_final(recognizer):
    assert finals(run_stream(recognizer, frames(silence(3000), 20))) == []
    assert recognizer.finish() == []


def test_low_noise_only_gives_no_final(recognizer):
    # Quiet pseudo-random hiss, deterministic: the VAD must not open an utterance on it,
    # and if it ever does, an empty hypothesis must not be reported.
    seed, samples = 12345, array.array("h")
    for _ in range(16000 * 2):
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        samples.append((seed >> 16) % 61 - 30)
    if sys.byteorder == "big":
        samples.byteswap()
    events = run_stream(recognizer, frames(samples.tobytes(), 100))
    assert all(e.text for e in events)


def test_finish_on_unused_recognizer(recognizer):
    assert recognizer.finish() == []


@pytest.mark.parametrize(
    "cut",
    [
        int(2.2 * 32000),  # leaves a partial VAD frame pending
        960 * 70,  # 2.1 s: a whole number of 30 ms VAD frames, nothing pending
    ],
)
def test_speech_cut_off_mid_utterance_is_finalised_by_finish(recognizer, cut):
    pcm = goforward_pcm()[:cut]  # ends while still speaking
    events: list[Event] = []
    for chunk in frames(pcm, 20):
        events += recognizer.feed(chunk)
    assert finals(events) == []
    closing = recognizer.finish()
    assert len(closing) == 1 and closing[0].final and closing[0].text
    assert closing[0].end_ms <= cut // 32 + 1


def test_close_mid_utterance_then_reuse(recognizer):
    pcm = goforward_pcm()
    for chunk in frames(pcm[: int(1.5 * 32000)], 20):
        recognizer.feed(chunk)
    recognizer.close()
    events = run_stream(recognizer, frames(pcm, 20))
    fin = finals(events)
    assert len(fin) == 1
    assert word_error_rate(GOFORWARD_TEXT, fin[0].text) <= 0.25
    assert fin[0].begin_ms < 1000, "times must restart at 0 for the new stream"


def test_8khz_input_is_supported(make):
    src = array.array("h", goforward_pcm())
    if sys.byteorder == "big":
        src.byteswap()
    # Crude 2:1 decimation with a 2-tap average (enough low-pass for this test).
    down = array.array("h", [(src[i] + src[i + 1]) >> 1 for i in range(0, len(src) - 1, 2)])
    if sys.byteorder == "big":
        down.byteswap()
    rec = make(sample_rate=8000)
    events = run_stream(rec, frames(down.tobytes(), 20, rate=8000))
    fin = finals(events)
    assert len(fin) == 1
    assert word_error_rate(GOFORWARD_TEXT, fin[0].text) <= 0.25, fin[0].text
    assert 0 <= fin[0].begin_ms < fin[0].end_ms <= 2800


@pytest.mark.parametrize("rate", [32000, 48000])
def test_wideband_rates_are_decoded_natively(make, rate):
    src = array.array("h", goforward_pcm())
    if sys.byteorder == "big":
        src.byteswap()
    up = resample_linear(src, 16000, rate)
    if sys.byteorder == "big":
        up.byteswap()
    rec = make(sample_rate=rate)
    events = run_stream(rec, frames(up.tobytes(), 20, rate=rate))
    fin = finals(events)
    assert len(fin) == 1
    assert word_error_rate(GOFORWARD_TEXT, fin[0].text) <= 0.25, fin[0].text
    assert 0 <= fin[0].begin_ms < fin[0].end_ms <= 2800


@pytest.mark.parametrize("rate", [11025, 22050, 44100, 0])
def test_unsupported_rate_is_a_clear_error(make, rate):
    with pytest.raises(ValueError, match="16000") as info:
        make(sample_rate=rate)
    for supported in SUPPORTED_RATES:
        assert str(supported) in str(info.value)


def test_rescore_finals_option(make, two_sentences):
    rec = make(rescore_finals=True)
    events = run_stream(rec, frames(two_sentences, 100))
    assert len(finals(events)) == 2
    wer = word_error_rate(f"{SENTENCE_1} {SENTENCE_2}", final_text(events))
    assert wer <= 0.3, final_text(events)


def test_usable_from_asyncio_threads(make):
    pcm = goforward_pcm()

    async def main() -> list[Event]:
        rec = await asyncio.to_thread(make)
        events: list[Event] = []
        for chunk in frames(pcm, 100):
            events += await asyncio.to_thread(rec.feed, chunk)
        return events + await asyncio.to_thread(rec.finish)

    events = asyncio.run(main())
    assert word_error_rate(GOFORWARD_TEXT, final_text(events)) <= 0.25


def test_pocketsphinx_is_the_installed_engine(model_dir):
    site = _engine_site_packages(model_dir.parent.parent.parent)
    module = sys.modules["pocketsphinx"]
    if not Path(module.__file__).is_relative_to(site):
        pytest.skip(f"pocketsphinx was imported by another test first ({module.__file__})")
    assert (site / "pocketsphinx-5.1.1.dist-info").is_dir()


def test_the_model_parts_come_from_the_pulled_folder(model_dir, paths):
    assert Path(paths.hmm) == model_dir / "en-us" / "en-us"
    assert (Path(paths.hmm) / "mdef").is_file()
    assert Path(paths.lm) == model_dir / "en-us" / "en-us.lm.bin"  # not the phone-loop LM
    assert Path(paths.dict) == model_dir / "en-us" / "cmudict-en-us.dict"


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="mdef") as info:
        ModelPaths.from_folder(tmp_path)
    assert "lm.bin" in str(info.value) and ".dict" in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        ModelPaths.from_folder(tmp_path / "missing")


def test_a_model_that_does_not_load_raises(make, paths, tmp_path):
    with pytest.raises(RuntimeError):
        make(model=ModelPaths(hmm=str(tmp_path), lm=paths.lm, dict=paths.dict))


def test_restart_makes_a_used_recogniser_decode_as_a_fresh_one(make):
    """What lets the plugin's pool hand one decoder to many clients: after restart() the
    same audio gives exactly the events a new instance gives, whatever came before."""
    speech = frames(goforward_pcm(), 100)
    fresh = run_stream(make(), speech)
    rec = make()
    run_stream(rec, frames(flite_pcm("please open the window") + silence(500), 100))
    rec.feed(speech[0])  # a stream left half-way, as a client that went away leaves it
    rec.restart()
    assert run_stream(rec, speech) == fresh


def test_release_frees_the_decoder_and_refuses_more_audio(make):
    rec = make()
    rec.feed(goforward_pcm()[:16000])
    rec.release()
    assert rec._decoder is None  # the model is freed now, not when the object goes
    with pytest.raises(RuntimeError, match="released"):
        rec.feed(b"\x00" * 320)
    rec.release()  # twice is harmless
