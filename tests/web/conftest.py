"""The web page in-process: a ControlServer with its WebUI on a real loopback port and a real
control socket, a dry-run enforcer; and a plain HTTP client that logs in as a browser would."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bansink.actions.dryrun import DryRunBackend
from bansink.bans import BanBook
from bansink.config import parse_config
from bansink.control import ControlServer
from bansink.enforcer import Enforcer
from bansink.jails import build_pipeline
from bansink.web.server import WebUI

TOKEN = "a-test-token-that-is-long-enough"
SENDER = "192.0.2.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html[:500]
    return found.group(1)


@dataclass
class Served:
    server: ControlServer
    page: WebUI
    book: BanBook
    base: str
    """http(s)://127.0.0.1:PORT"""
    socket: Path
    ssl: Any = None
    token: str = TOKEN
    csrf_of = staticmethod(csrf_of)

    def client(self, **kw: Any) -> aiohttp.ClientSession:
        """A browser-like client: it keeps cookies set for an IP address (aiohttp's jar
        refuses them unless `unsafe`), follows no redirect unless asked."""
        connector = aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     connector=connector, **kw)

    def socket_client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def login(self, http: aiohttp.ClientSession, secret: str = TOKEN,
                    nxt: str = "/") -> aiohttp.ClientResponse:
        async with http.get(f"{self.base}/login") as r:
            token = csrf_of(await r.text())
        return await http.post(f"{self.base}/login", allow_redirects=False,
                               data={"csrf": token, "secret": secret, "next": nxt})

    async def csrf(self, http: aiohttp.ClientSession, base: str | None = None) -> str:
        async with http.get(f"{base or self.base}/bans") as r:
            assert r.status == 200
            return csrf_of(await r.text())


def serve(tmp_path: Path, scenario: Callable[[Served], Awaitable[Any]], *,
          web: dict[str, Any] | None = None, extra_routes: list[Any] | None = None,
          tls: tuple[Path, Path] | None = None) -> Any:
    """Run `scenario(served)` against a ControlServer with the page at 127.0.0.1:PORT (and
    its control socket), `web` the [web] section's keys (listen and token given)."""
    port = free_port()
    section = {"listen": f"127.0.0.1:{port}", "token": TOKEN, **(web or {})}
    if tls is not None:
        section.update(tls_certificate=str(tls[0]), tls_key=str(tls[1]))
    config = parse_config({"receiver": {"senders": [f"{SENDER}/32"]}, "web": section})

    class Server(ControlServer):
        def app(self):  # how another part (e.g. /metrics) adds a route to the application
            app = super().app()
            app.add_routes(extra_routes or [])
            return app

    async def main() -> Any:
        enforcer = Enforcer(DryRunBackend(), 0.001)
        book = BanBook(build_pipeline(config), enforcer, None, findtime=lambda jail: 600.0)
        page = WebUI(book, None, config.web, settings=lambda: config,
                     stats=lambda: {"received": {"udp": 3}, "drops": {"too_large": 1}})
        server = Server(book, None, tmp_path / "run" / "control.sock", page=page)
        await server.start()
        scheme = "https" if tls is not None else "http"
        served = Served(server, page, book, f"{scheme}://127.0.0.1:{port}", server.path,
                        ssl=False if tls is not None else None)
        try:
            return await scenario(served)
        finally:
            await server.stop()
            await enforcer.close()

    return asyncio.run(main())


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Any]:
    """`run(scenario, web={...}, extra_routes=[...], tls=(cert, key))`: see serve()."""
    return lambda scenario, **kw: serve(tmp_path, scenario, **kw)


# -- a real daemon in the lab's namespaces, and Debian's chromium beside it -------------------

WEB_PORT = 8742
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("BANSINK_SCREENSHOTS")
                   or Path(__file__).resolve().parents[1] / "artifacts" / "screenshots")
"""Where the browser tests leave a picture of each page ($BANSINK_SCREENSHOTS, else
tests/artifacts/screenshots/, which git ignores)."""


@dataclass
class Browsing:
    lab: Any
    page: Any
    """playwright.sync_api.Page, in the proxy's namespace"""
    url: str
    """http://127.0.0.1:8742 as seen from there"""

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def log_in(self) -> None:
        self.page.goto(self.url + "/")
        assert "/login" in self.page.url
        self.page.fill("input[name=secret]", TOKEN)
        self.page.click("form[action$='/login'] button[type=submit]")
        self.page.wait_for_url(self.url + "/")


@pytest.fixture
def browsing(tmp_path: Path) -> Any:
    """The lab (tests/lab.py) with `bansink run` serving the page on 127.0.0.1:8742 in the
    proxy's namespace, and a headless chromium started in that namespace by Playwright
    (never a browser of Playwright's own: PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD, executable_path)."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: sh deploy/setup.sh --test")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    from lab import config, make_lab
    from support import Daemon

    web = f'[web]\nlisten = "127.0.0.1:{WEB_PORT}"\ntoken = "{TOKEN}"\n'
    with make_lab(tmp_path) as lab:
        lab.daemon = Daemon(lab.proxy, config(maxretry=3, extra=web), lab.tmp)
        wrapper = tmp_path / "chromium-in-namespace"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lab.proxy.name} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(wrapper),
                args=["--disable-gpu", "--disable-background-networking", "--no-first-run",
                      "--disable-component-update", "--disable-sync",
                      "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(10_000)
                yield Browsing(lab, page, f"http://127.0.0.1:{WEB_PORT}")
            finally:
                browser.close()
