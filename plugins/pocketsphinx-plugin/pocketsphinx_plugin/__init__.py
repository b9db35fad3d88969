"""Realtime speech-to-text plugin built on pocketsphinx."""
