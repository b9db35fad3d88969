"""The web console at `/`, driven by a real browser against a real gateway.

Real: Debian's headless Chromium (driven by Playwright; no browser is downloaded), a
gateway subprocess serving every shipped plugin with its real engines and models (in an
engine folder of its own whose engines and models link to the installed ones, so the
pull test never touches the shared one), a loopback HTTP server that trickles a "model"
for the pull, and a recorded human voice (pocketsphinx's "go forward ten meters") played
as the browser's microphone through Chromium's fake capture device.

Proven, through the page only (clicks and what the page shows): it loads with no
console errors, everything from the gateway itself (no CDN), and lists the shipped
plugins, engines and services; a chat streams
tokens into the page and shows the provider that served it and the time to first token;
embeddings are compared; a pull shows moving progress and can be canceled; text to
speech gives the audio element playable audio; the microphone button transcribes live
over the realtime WebSocket with partial results and then the final text; the recent
requests view lists the calls the page made. And the request guard: the page and its
files load where the management key is required, the page asks for the key and works
once it is given, and the files stay refused to other sites; where client API keys are
required, the microphone's socket is refused without one, the page asks for it, and
once given live transcription works (the key rides as a WebSocket subprotocol).

Screenshots are saved in `.cache/artifacts/console/` (not committed).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from audio import GOFORWARD_TEXT, goforward_pcm, word_error_rate
from conftest import (
    LOCAL_PLUGINS,
    REPO,
    SHIPPED_PLUGIN_DIR,
    Gateway,
    require_engines,
    shipped_plugins_gateway,
)
from playwright.sync_api import Browser, Page, sync_playwright

from aogstream.http.guard import route_kind

ARTIFACTS = REPO / ".cache" / "artifacts" / "console"
EMBED_PROVIDER = "local_embed-plugin_embed"
WAIT = 60.0  # the longest any one condition may take (a loaded 2-core machine)


# ---- the browser and the gateway ---------------------------------------------------------


def chromium_path() -> str:
    """Debian's Chromium (tools/sysdeps.sh installs it); fail with the fix if missing."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed; run `make sysdeps` (Debian's chromium package)")


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone: 0.5 s of silence, the recording, then 2 s of silence (the
    recogniser settles the sentence on the trailing silence)."""
    path = tmp_path_factory.mktemp("mic") / "goforward.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0" * 16000 + goforward_pcm() + b"\0" * 64000)
    return path


@pytest.fixture(scope="module")
def browser(mic_wav: Path) -> Iterator[Browser]:
    args = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
            "--autoplay-policy=no-user-gesture-required"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def console_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Every shipped plugin, with an engine folder whose engines and models link to the
    installed ones (a model pulled here lands in this folder only)."""
    src = require_engines(LOCAL_PLUGINS)
    root = tmp_path_factory.mktemp("console")
    engine_dir = root / "engines"
    for name in LOCAL_PLUGINS:
        models = engine_dir / name / "models"
        models.mkdir(parents=True)
        (engine_dir / name / "engine").symlink_to(src / name / "engine",
                                                  target_is_directory=True)
        for model in (src / name / "models").iterdir():
            if model.is_dir():
                (models / model.name).symlink_to(model, target_is_directory=True)
    gw = Gateway(root / "gw", {"AOGSTREAM_ENGINE_DIR": str(engine_dir)},
                 plugin_dir=SHIPPED_PLUGIN_DIR)
    gw.start()
    try:
        for name in LOCAL_PLUGINS:
            gw.wait_plugin_running(name=name, timeout=120)
        yield gw
    finally:
        gw.stop()


class Console:
    """One page of the console, with the console messages it logged."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []  # every URL the page asked for
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def value(self, expression: str) -> Any:
        return self.page.evaluate(expression)

    def wait_for(self, what: str, expression: str, timeout: float = WAIT) -> Any:
        """Poll a JavaScript expression until it is truthy (the page's CSP forbids
        Playwright's own string predicates, which need eval)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.value(expression)
            if got:
                return got
            if time.monotonic() > deadline:
                self.shot(f"timeout-{what}")
                raise AssertionError(f"{what}: not within {timeout} s; console errors "
                                     f"{self.errors}")
            time.sleep(0.05)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def console(browser: Browser, console_gateway: Gateway) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    c = Console(page)
    page.goto(console_gateway.url + "/")
    c.wait_for("the status loaded", "document.body.dataset.loaded === 'true'")
    try:
        yield c
    finally:
        context.close()


def text_of(c: Console, element_id: str) -> str:
    return str(c.value(f"document.getElementById({element_id!r}).textContent"))


def table_column(c: Console, table_id: str, col: int) -> list[str]:
    return list(c.value(f"[...document.querySelectorAll('#{table_id} tbody tr')]"
                        f".map(r => r.cells[{col}].textContent)"))


# ---- the tests -------------------------------------------------------------------------


def test_page_loads_without_errors_and_lists_the_shipped_plugins(console, console_gateway):
    shipped = sorted(p.name for p in SHIPPED_PLUGIN_DIR.iterdir()
                     if (p / "plugin.yaml").exists())
    assert shipped, "no shipped plugins found"
    names = table_column(console, "plugins", 0)
    assert sorted(names) == shipped, names
    states = dict(zip(names, table_column(console, "plugins", 2), strict=True))
    assert all(s == "running" for s in states.values()), states
    engines = dict(zip(table_column(console, "engines", 0),
                       table_column(console, "engines", 1), strict=True))
    assert engines == dict.fromkeys(LOCAL_PLUGINS, "UP"), engines
    services = dict(zip(table_column(console, "services", 0),
                        table_column(console, "services", 1), strict=True))
    for service in ("chat", "embed", "text-to-speech", "speech-to-text-ws"):
        assert services[service] == "serving", services
    assert "multilingual-e5-small" in table_column(console, "models", 0)
    assert text_of(console, "version").startswith("aogstream ")
    # offline: everything the page loaded came from the gateway itself (no CDN)
    own = console_gateway.url + "/"
    assert console.requests and all(u.startswith((own, "data:")) for u in console.requests), \
        console.requests
    console.shot("status")
    assert console.errors == []


def test_chat_streams_tokens_into_the_page(console):
    page = console.page
    # every state the answer's text goes through, as the browser renders it
    console.value("""(() => {
        window.seen = [];
        new MutationObserver(() => {
            const m = document.querySelector('#chat-log .msg.assistant');
            if (m) window.seen.push(m.textContent);
        }).observe(document.getElementById('chat-log'),
                   {childList: true, subtree: true, characterData: true});
    })()""")
    page.fill("#chat-max", "24")
    page.fill("#chat-input", "What is the capital of France?")
    page.click("#chat-send")
    console.wait_for("the answer ended",
                     "document.querySelector('#chat-log .msg.assistant')?.dataset.done "
                     "=== 'true'", timeout=240)
    answer = text_of(console, "chat-log")
    reply = console.value("document.querySelector('#chat-log .msg.assistant').textContent")
    assert reply and "[" not in reply, answer
    seen = [s for s in console.value("window.seen") if s]
    growing = list(dict.fromkeys(seen))
    assert len(growing) >= 3, f"the answer did not arrive in pieces: {growing}"
    assert all(reply.startswith(s) for s in growing), growing
    assert text_of(console, "chat-provider") == "local_llamacpp-plugin_chat"
    ttft = text_of(console, "chat-ttft")
    assert ttft.endswith(" ms") and int(ttft.split()[0]) > 0, ttft
    console.shot("chat")
    assert console.errors == []


def test_embeddings_are_compared(console):
    console.page.click("#embed-form button")
    console.wait_for("the similarity table",
                     "document.querySelectorAll('#embed-table tbody tr').length === 3")
    summary = text_of(console, "embed-summary")
    assert "3 vectors of 384 dimensions" in summary, summary
    rows = console.value("[...document.querySelectorAll('#embed-table tbody tr')]"
                         ".map(r => [...r.cells].slice(1).map(c => Number(c.textContent)))")
    assert all(abs(rows[i][i] - 1.0) < 1e-3 for i in range(3)), rows
    assert rows[0][1] > rows[0][2], rows  # the two password questions are the closest
    assert console.errors == []


class SlowModel(BaseHTTPRequestHandler):
    """Trickles a 10 MB "model" 100 kB at a time (at most 9 MB, then stalls), so a pull
    of it is surely still running when the page cancels it; `hung_up` is set when the
    downloader closes its connection."""

    done = threading.Event()
    hung_up = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        try:
            for _ in range(90):
                if self.done.wait(0.1) or self._peer_closed():
                    return
                self.wfile.write(b"\0" * 100_000)
                self.wfile.flush()
            while not self.done.is_set():
                if self._peer_closed(timeout=0.05):
                    return
        except OSError:
            type(self).hung_up.set()

    def _peer_closed(self, timeout: float = 0.0) -> bool:
        ready, _, _ = select.select([self.connection], [], [], timeout)
        if ready and not self.connection.recv(1, socket.MSG_PEEK):
            type(self).hung_up.set()
            return True
        return False

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_model_url() -> Iterator[str]:
    SlowModel.done.clear()
    SlowModel.hung_up.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow-e5.bin"
    finally:
        SlowModel.done.set()
        server.shutdown()
        server.server_close()


def test_a_pull_shows_moving_progress_and_can_be_canceled(console, console_gateway,
                                                          slow_model_url):
    page = console.page
    page.fill("#pull-model", slow_model_url)
    page.select_option("#pull-service", "embed")
    page.select_option("#pull-provider", EMBED_PROVIDER)
    page.click("#pull")
    progress = "Number(document.getElementById('pull-progress').dataset.completed || 0)"
    first = console.wait_for("pull progress", progress)
    console.wait_for("pull progress moving on", f"{progress} > {first}")
    status = text_of(console, "pull-status")
    assert "%" in status and "MB" in status, status
    assert 0 < console.value("document.getElementById('pull-progress').value") < 100
    console.shot("pull")
    page.click("#pull-cancel")
    console.wait_for("the pull's end",
                     "document.getElementById('pull-status').dataset.outcome")
    assert console.value("document.getElementById('pull-status').dataset.outcome") \
        == "canceled", text_of(console, "pull-status")
    assert SlowModel.hung_up.wait(15), "the gateway kept downloading after the cancel"
    models = httpx.get(f"{console_gateway.url}/aog/v0.2/model",
                       params={"provider_name": EMBED_PROVIDER}, timeout=10).json()["data"]
    assert not any("slow-e5" in m["model_name"] for m in models), models
    assert console.errors == []


def test_text_to_speech_gives_playable_audio(console):
    page = console.page
    page.fill("#tts-input", "The weather is nice today.")
    page.click("#tts-speak")
    # HAVE_ENOUGH_DATA: the browser decoded the WAV and can play it through
    console.wait_for("audio ready", "document.getElementById('tts-audio').readyState === 4")
    audio = console.value("(() => { const a = document.getElementById('tts-audio'); "
                          "return {duration: a.duration, error: a.error, src: a.src}; })()")
    assert audio["error"] is None and audio["src"].startswith("blob:"), audio
    assert 0.8 < audio["duration"] < 10, audio
    console.wait_for("the audio playing", "document.getElementById('tts-audio').currentTime > 0")
    status = text_of(console, "tts-status")
    assert "local_piper-plugin_text-to-speech" in status, status
    console.shot("tts")
    assert console.errors == []


def test_microphone_transcribes_live_with_partials(console):
    page = console.page
    page.select_option("#asr-model", "pocketsphinx-en-us")
    page.click("#mic")
    # counted by the page as they arrive: a partial may be on screen for a moment only
    console.wait_for("a partial result",
                     "Number(document.getElementById('asr-partial').dataset.partials || 0)")
    console.shot("transcribing")
    # the whole recording and its trailing silence have gone to the gateway
    console.wait_for("the recording sent", "Number(document.getElementById('mic')"
                     ".dataset.sentMs || 0) >= 5500", timeout=30)
    page.click("#mic")
    console.wait_for("task-finished",
                     "document.getElementById('mic').dataset.state === 'finished'")
    final = text_of(console, "asr-final").strip().lower()
    assert "go forward" in final and word_error_rate(GOFORWARD_TEXT, final) <= 0.25, final
    assert int(console.value("document.getElementById('asr-partial').dataset.partials")) >= 2
    assert text_of(console, "asr-partial") == ""  # the settled text replaced the partial
    assert text_of(console, "mic") == "Start microphone"
    console.shot("transcribed")
    assert console.errors == []


def test_recent_requests_view_lists_what_the_page_called(console):
    console.page.click("#embed-form button")
    console.wait_for("the embed call in the requests view",
                     "[...document.querySelectorAll('#requests-table tbody tr')].some(r => "
                     "r.cells[2].textContent === '/aog/v0.2/services/embed' && "
                     f"r.cells[5].textContent === {EMBED_PROVIDER!r} && "
                     "r.cells[6].textContent === '200')", timeout=30)
    assert "/aog/v0.2/plugin/list" in table_column(console, "requests-table", 2)
    console.shot("requests")
    assert console.errors == []


# ---- the request guard ------------------------------------------------------------------


def test_console_files_are_public_routes_only_by_exact_name():
    assert route_kind("/") == "public"
    assert route_kind("/console/console.js") == "public"
    assert route_kind("/console/a/b.js") == "management"
    assert route_kind("/consolex") == "management"


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The echo plugin's gateway requiring the management key on loopback too."""
    gw = Gateway(tmp_path_factory.mktemp("console-keyed"), {
        "AOGSTREAM_REQUIRE_MANAGEMENT_KEY": "1",
        "AOGSTREAM_MANAGEMENT_KEY": "console-test-key-7731"}).start()
    try:
        yield gw
    finally:
        gw.stop()


@contextmanager
def fresh_page(browser: Browser, gw: Gateway) -> Iterator[Console]:
    """The console of `gw` in a browser context of its own (no key kept from another
    test), closed on exit."""
    context = browser.new_context()
    try:
        page = context.new_page()
        c = Console(page)
        page.goto(gw.url + "/")
        yield c
    finally:
        context.close()


def test_page_asks_for_the_management_key_and_works_with_it(browser, keyed_gateway):
    with fresh_page(browser, keyed_gateway) as c:
        page = c.page
        c.wait_for("the key field", "!document.getElementById('key-form').hidden")
        assert "management key" in text_of(c, "notice")
        assert "Could not read" not in text_of(c, "notice")
        page.fill("#key", "console-test-key-7731")
        page.click("#key-form button")
        c.wait_for("the status loaded", "document.body.dataset.loaded === 'true'")
        assert "echo-plugin" in table_column(c, "plugins", 0)
        assert c.value("document.getElementById('notice').hidden")
        # kept for this tab only, never in localStorage
        assert c.value("localStorage.length") == 0


@pytest.mark.parametrize("path", ["/", "/console/console.js"])
def test_console_files_are_refused_to_other_sites(keyed_gateway, path):
    url = keyed_gateway.url + path
    assert httpx.get(url, timeout=5).status_code == 200  # no key needed for the files
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"},
                    {"Host": "evil.example"}):
        assert httpx.get(url, headers=headers, timeout=5).status_code == 403, headers


CLIENT_KEY = "console-client-key-5519"


@pytest.fixture(scope="module")
def api_keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The realtime speech plugin behind client API keys (the console on loopback)."""
    with shipped_plugins_gateway(tmp_path_factory.mktemp("console-api-keys"),
                                 ["pocketsphinx-plugin"],
                                 {"AOGSTREAM_API_KEYS": CLIENT_KEY}) as gw:
        yield gw


def test_microphone_works_where_client_api_keys_are_required(browser, api_keyed_gateway):
    with fresh_page(browser, api_keyed_gateway) as c:
        page = c.page
        c.wait_for("the status loaded", "document.body.dataset.loaded === 'true'")
        page.click("#mic")  # no key yet: the socket is refused and the page asks for one
        c.wait_for("the refusal", "document.getElementById('mic').dataset.state === 'failed'")
        assert c.value("!document.getElementById('key-form').hidden")
        assert "API keys" in text_of(c, "notice")
        page.fill("#key", CLIENT_KEY)
        page.click("#key-form button")
        c.wait_for("the status loaded again", "document.body.dataset.loaded === 'true'")
        page.click("#mic")
        c.wait_for("a partial result",
                   "Number(document.getElementById('asr-partial').dataset.partials || 0)")
        assert c.value("document.getElementById('mic').dataset.state") == "recording"
        # the whole recording has gone to the gateway before it is stopped (stopped at
        # the first partial, the final is only the words heard so far)
        c.wait_for("the recording sent", "Number(document.getElementById('mic')"
                   ".dataset.sentMs || 0) >= 5500", timeout=30)
        page.click("#mic")
        c.wait_for("task-finished",
                   "document.getElementById('mic').dataset.state === 'finished'")
        assert "go forward" in text_of(c, "asr-final").lower()
        assert CLIENT_KEY not in " ".join(c.requests)  # never in a URL
