"""The operator console: static HTML, CSS and JavaScript from airgap_orch/console/, served at /console.

The files need no token (they hold no data); everything the page shows it reads from the JSON API with the token
the operator types in, which the page keeps in memory only. Every answer carries a strict Content-Security-Policy
(no inline script or style, nothing from another origin, no framing) and is never cached.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent.parent / "console"
CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".png": "image/png",
                 ".svg": "image/svg+xml"}
FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|css|js|png|svg)$")
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Frame-Options": "DENY",
           "Cross-Origin-Opener-Policy": "same-origin"}


async def page(request: web.Request) -> web.Response:
    """GET /console and /console/ answer index.html; /console/NAME one of the console's files; else 404."""
    name = request.match_info.get("name") or "index.html"
    path = STATIC / name
    if not FILE_NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound()
    suffix = path.suffix
    body = path.read_bytes()
    charset = "utf-8" if suffix in (".html", ".css", ".js", ".svg") else None
    return web.Response(body=body, content_type=CONTENT_TYPES[suffix], charset=charset, headers=HEADERS)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/console", page)
    app.router.add_get("/console/", page)
    app.router.add_get("/console/{name}", page)
