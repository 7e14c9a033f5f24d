"""Self-contained map HTML: every script and stylesheet inlined, no request at view time.

A grid manager opens the field map on a phone in a basement or a village without coverage,
so the page cannot fetch Leaflet from a CDN. folium renders ``<script src=CDN>`` and
``<link href=CDN>`` tags; :func:`inline_assets` replaces each with the copy vendored in
``territory/assets`` (see its README for packages, versions and licences), matched by file
name, and refuses to write a page that still references anything outside. Images referenced
by the stylesheets become ``data:`` URIs for the same reason.
"""

from __future__ import annotations

import base64
import re
from functools import cache
from pathlib import Path

import folium

from territory.atomic import write_text

ASSETS = Path(__file__).parent / "assets"

#: CDN file name (as folium's templates spell it) -> vendored file under :data:`ASSETS`.
VENDORED = {
    "leaflet.js": "leaflet/leaflet.js",
    "leaflet.css": "leaflet/leaflet.css",
    "leaflet.markercluster.js": "leaflet.markercluster/leaflet.markercluster.js",
    "MarkerCluster.css": "leaflet.markercluster/MarkerCluster.css",
    "MarkerCluster.Default.css": "leaflet.markercluster/MarkerCluster.Default.css",
    "leaflet_heat.min.js": "leaflet.heat/leaflet-heat.js",
}

#: The only assets a base map needs; folium's jQuery/Bootstrap/Font Awesome serve icons
#: these maps do not use.
LEAFLET_JS = [("leaflet", "https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js")]
LEAFLET_CSS = [("leaflet_css", "https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.css")]

_SCRIPT = re.compile(r'<script src="([^"]+)"></script>')
_STYLESHEET = re.compile(r'<link rel="stylesheet" href="([^"]+)"\s*/>')
_CSS_URL = re.compile(r"url\((images/[\w.-]+\.png)\)")
_OUTSIDE = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//""",
                      re.IGNORECASE)


class OfflineAssetError(RuntimeError):
    """A map references an asset that has no vendored copy: it would need the internet."""


def leaflet_only(m: folium.Map) -> folium.Map:
    """Strip folium's default jQuery/Bootstrap/Font Awesome links from ``m``; return it."""
    m.default_js = list(LEAFLET_JS)
    m.default_css = list(LEAFLET_CSS)
    return m


@cache
def _asset(name: str) -> str:
    path = ASSETS / VENDORED[name]
    text = path.read_text(encoding="utf-8")
    if name.endswith(".css"):
        def data_uri(match: re.Match[str]) -> str:
            png = base64.b64encode((path.parent / match.group(1)).read_bytes()).decode()
            return f'url("data:image/png;base64,{png}")'

        return _CSS_URL.sub(data_uri, text)
    # a literal "</script" inside an inlined script would close the tag early
    return text.replace("</script", "<\\/script")


def _vendored(url: str) -> str:
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    if name not in VENDORED:
        raise OfflineAssetError(
            f"{url} has no vendored copy in {ASSETS}; add it there (see README.md) or drop "
            "the element that needs it"
        )
    return name


def inline_assets(html: str) -> str:
    """``html`` with every external script/stylesheet inlined from the vendored copies.

    Raises:
        OfflineAssetError: an asset has no vendored copy, or the page itself (outside the
            script and stylesheet tags replaced) references an outside URL in a
            ``src``/``href`` attribute or a CSS ``url()``.
    """
    rest = _STYLESHEET.sub("", _SCRIPT.sub("", html))
    outside = _OUTSIDE.search(rest)
    if outside:
        context = rest[max(outside.start() - 80, 0): outside.end() + 80]
        raise OfflineAssetError(f"the map references an outside resource: …{context}…")
    html = _SCRIPT.sub(lambda m: f"<script>{_asset(_vendored(m.group(1)))}</script>", html)
    return _STYLESHEET.sub(lambda m: f"<style>{_asset(_vendored(m.group(1)))}</style>", html)


def offline_html(m: folium.Map) -> str:
    """The whole page of ``m`` as one self-contained HTML document."""
    return inline_assets(m.get_root().render())


def save_map(m: folium.Map, path: str | Path) -> Path:
    """Write ``m`` as a self-contained HTML file (atomically); return its path."""
    return write_text(path, offline_html(m))
