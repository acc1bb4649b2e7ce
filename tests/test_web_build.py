"""The page ships built: the committed ``backtalk/web/dist`` must match its sources.

Users install Backtalk with pip and never run Node, so ``dist/`` is committed. Its
``build-manifest.json`` records a SHA-256 of the build's inputs (``backtalk/web/build.mjs``
documents the recipe); this test recomputes it, so a change to the page's sources
without ``npm --prefix backtalk/web ci && npm --prefix backtalk/web run build`` fails
here, on any machine, without Node.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

WEB = Path(__file__).resolve().parent.parent / "backtalk" / "web"
REBUILD = "npm --prefix backtalk/web ci && npm --prefix backtalk/web run build"


def sources() -> list[str]:
    found = [p.relative_to(WEB).as_posix() for p in (WEB / "src").rglob("*") if p.is_file()]
    return sorted([*found, "package.json", "package-lock.json"])


def test_the_committed_build_is_built_from_the_committed_sources():
    manifest = json.loads((WEB / "dist" / "build-manifest.json").read_text())
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.encode() + b"\n")
        digest.update((WEB / path).read_bytes())
        digest.update(b"\n")
    assert manifest["sources"] == sources(), f"the page's sources changed: run {REBUILD}"
    assert manifest["sources_sha256"] == digest.hexdigest(), f"dist/ is stale: run {REBUILD}"


def test_every_built_file_is_committed_and_the_page_loads_only_them():
    manifest = json.loads((WEB / "dist" / "build-manifest.json").read_text())
    for name in manifest["files"]:
        assert (WEB / "dist" / name).is_file(), name
    page = (WEB / "dist" / "index.html").read_text()
    assert 'src="/assets/app.js"' in page and 'href="/assets/app.css"' in page
    # Offline but for YouTube's player script: no CDN, font or analytics request.
    bundle = (WEB / "dist" / "assets" / "app.js").read_text()
    assert "c.daily.co" not in bundle and "unpkg.com" not in bundle and "fonts.googleapis" not in bundle
