"""/docs works without the Internet: Swagger UI comes from the gateway itself.

A real gateway process; the page is fetched without a credential (it is public, the API
behind it is not) and, where Debian's chromium is installed, rendered by a headless browser
that may reach nothing but the gateway.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.wardgate import GatewayProc, Wardgate

pytestmark = pytest.mark.e2e

CONTENT_TYPES = {
    ".js": "javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    wg = Wardgate(tmp_path_factory.mktemp("docs"))
    try:
        yield wg.gateway()
    finally:
        wg.close()


def _anonymous(gw: GatewayProc) -> httpx.Client:
    return httpx.Client(
        base_url=gw.url,
        verify=ssl.create_default_context(cafile=str(gw.ca_path)),
        timeout=30,
    )


def test_docs_load_everything_from_the_gateway(gw: GatewayProc) -> None:
    with _anonymous(gw) as http:
        page = http.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        spec = re.search(r"url: '([^']+)'", page.text)
        assert spec is not None, page.text
        assert len(assets) == 3, assets  # the script, the stylesheet, the icon
        for url in [*assets, spec.group(1)]:
            assert not urlsplit(url).netloc and url.startswith("/"), url  # no other host
            got = http.get(url)
            assert got.status_code == 200, url
            suffix = url[url.rindex(".") :]
            assert CONTENT_TYPES[suffix] in got.headers["content-type"], (url, got.headers)
        assert "http://" not in page.text.replace("http://www.w3.org", "")
        assert not re.search(r"https://(?!fastapi\.tiangolo\.com)", page.text), page.text
        document = http.get(spec.group(1)).json()
        # Swagger UI 4 reads OpenAPI 3.0; /openapi.json stays 3.1 for everyone else.
        assert document["openapi"] == "3.0.3"
        assert "/v1/whoami" in document["paths"]
        assert http.get("/openapi.json").json()["openapi"].startswith("3.1")
        # ReDoc would load from a CDN, and no package we ship carries it.
        assert http.get("/redoc").status_code == 404


def test_docs_render_in_a_headless_browser(gw: GatewayProc) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    out = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--ignore-certificate-errors",
            # Any host but the gateway is unreachable: a CDN fetch would fail the page.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--dump-dom",
            "--virtual-time-budget=5000",
            f"{gw.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert 'class="swagger-ui' in dom, dom[-2000:]
    assert "/v1/whoami" in dom  # the operation list was rendered from the spec
    assert "Unable to render this definition" not in dom
