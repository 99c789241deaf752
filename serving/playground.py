"""The playground page (``GET /``): one HTML page with its CSS and JS, shipped as package data.

No CDN and no build step, so a node without internet access serves it. The stylesheet and script are inlined
into the page when it is first asked for: one response, and no relative asset URLs to break when the app is
mounted under a route prefix (``/music`` and ``/music/`` resolve ``static/x.js`` differently). The API calls
the page makes are relative to its own path for the same reason. Design: docs/design.md §21.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["ASSETS", "page"]

#: the files under ``serving/static/`` (package data, see pyproject.toml)
ASSETS = ("index.html", "playground.css", "playground.js")


def _read(name: str) -> str:
    return resources.files("musicgen_onnx.serving").joinpath("static", name).read_text(encoding="utf-8")


@functools.cache
def page() -> str:
    """index.html with playground.css and playground.js inlined at their marker comments."""
    html, css, js = (_read(name) for name in ASSETS)
    if "</script" in js.lower() or "</style" in css.lower():
        raise ValueError("the playground's script or stylesheet would close its own inline element")
    for marker, element in (
        ("<!-- playground.css -->", f"<style>\n{css}</style>"),
        ("<!-- playground.js -->", f"<script>\n{js}</script>"),
    ):
        if marker not in html:
            raise ValueError(f"index.html lacks the marker {marker}")
        html = html.replace(marker, element)
    return html
