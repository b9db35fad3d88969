"""Unit test of whisper-plugin's stable-prefix policy (`whisper_realtime.StablePrefix`),
fed the decodes a growing utterance gets. Nothing else is involved: it proves that
committed words only grow and never change, that two consecutive decodes must agree
before a word is committed, and that the final keeps every committed word."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "whisper-plugin"))

from whisper_realtime import StablePrefix

DECODES = ["Go for it.", "Go forward 10.", "Go forward 10 meters.", "go forward, ten meters",
           "Go forward 10 meters. Thank you."]


def test_words_are_committed_only_when_two_consecutive_decodes_agree():
    sp = StablePrefix()
    sp.update("Go for it.")
    assert sp.committed == []  # one decode proves nothing
    sp.update("Go forward 10.")
    assert sp.committed == ["Go"]
    sp.update("Go forward 10 meters.")
    assert sp.committed == ["Go", "forward", "10"]
    assert sp.text() == "Go forward 10 meters."


def test_committed_words_never_change_whatever_later_decodes_say():
    sp = StablePrefix()
    seen: list[str] = []
    for text in DECODES:
        sp.update(text)
        assert sp.committed[:len(seen)] == seen, (text, sp.committed, seen)
        seen = list(sp.committed)
    # a later decode that words the start differently does not rewrite it
    sp.update("Goal forward ten meters")
    assert sp.committed[:len(seen)] == seen


def test_the_final_keeps_the_committed_words_and_adds_what_follows():
    sp = StablePrefix()
    for text in DECODES[:3]:
        sp.update(text)
    assert sp.finish("go forward 10 meters.") == "Go forward 10 meters."
    assert sp.finish("forward ten meters please").startswith("Go forward 10")


def test_case_and_punctuation_do_not_block_agreement():
    sp = StablePrefix()
    sp.update("Hello, world")
    sp.update("hello world again")
    assert sp.committed == ["hello", "world"]
