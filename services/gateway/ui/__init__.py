"""The chat page under /ui/: static files shipped in the package, no build step, no CDN.

The page is plain HTML, CSS and JavaScript that talks to the same gateway's Ollama API
(`../api/...`, so it also works behind a path prefix). The files themselves are public
(security.py lets GET/HEAD of /ui/ through without the API key); every API call the page
makes carries the key the user typed into its settings.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

PREFIX = "/ui"
STATIC_DIR = Path(__file__).parent / "static"

# The page loads nothing from elsewhere; the markdown renderer escapes before it formats,
# and this policy is the second line: no inline script, no foreign origin, no framing.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag) so an upgraded Corral serves its own page
}

router = APIRouter()


@router.get(PREFIX, include_in_schema=False)
async def ui_root() -> Response:
    return RedirectResponse(PREFIX + "/", status_code=308)


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def static_files() -> StaticFiles:
    """The ASGI app the gateway mounts at PREFIX: index.html for the directory itself."""
    return _Static(directory=STATIC_DIR, html=True)
