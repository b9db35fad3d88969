"""The web console: `/` and its static files under `/console/`.

The page (`static/console/`) is plain HTML, CSS and JavaScript modules shipped in the
package: nothing is built or fetched at run time, so it works offline. It talks to the
gateway's public API from the same origin, which the request guard lets through
(same-origin `Origin`, `Sec-Fetch-Site: same-origin`); when the guard asks for the
management key (beyond loopback, or with `AOGSTREAM_REQUIRE_MANAGEMENT_KEY=1`) the
page asks the person for it and sends it as `Authorization: Bearer`. The page and its
files are public routes for the guard (they hold no data, and a page that cannot load
cannot ask for a key); the Host and cross-site checks still apply to them.
"""

from __future__ import annotations

from importlib import resources

from quart import Response
from quart_trio import QuartTrio

CONSOLE_PREFIX = "/console/"
# the page's files (name → content type): only these are served, so no path from a
# request ever reaches the file system
CONSOLE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "mic-worklet.js": "text/javascript; charset=utf-8",
}
# the page's own files only: no inline script, no other origin
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _file(name: str) -> Response:
    data = resources.files("aogstream.http").joinpath("static", "console", name).read_bytes()
    return Response(data, status=200, content_type=CONSOLE_FILES[name], headers={
        "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CSP})


def register_console(app: QuartTrio) -> None:
    """Serve the console at `/` and its files at `/console/<name>`."""

    @app.get("/")
    async def console_page() -> Response:
        return _file("index.html")

    @app.get(f"{CONSOLE_PREFIX}<name>")
    async def console_file(name: str) -> Response:
        if name not in CONSOLE_FILES:
            return Response('{"error": "no such file of the console; open / instead"}',
                            status=404, mimetype="application/json")
        return _file(name)
