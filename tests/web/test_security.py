"""The web page's access rules with a plain HTTP client, in-process on a real loopback port and
the real control socket: no credential, no page; a wrong Host, a missing CSRF token or a
foreign Origin are refused; every response carries the CSP; failed logins are rate-limited;
attacker-controlled strings come back escaped; a network-facing listen without TLS and a
credential never starts."""

import asyncio
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from bansink.web.auth import LoginLimiter, hash_password, verify_password
from bansink.web.server import CSP

BIN = Path(sys.executable).parent
PAGES = ["/", "/bans", "/entries", "/jails", "/address/203.0.113.7"]


def test_no_credential_no_page(run):
    async def scenario(s):
        async with s.client() as http:
            pages = []
            for path in PAGES:
                async with http.get(s.base + path, allow_redirects=False) as r:
                    pages.append((r.status, r.headers.get("Location")))
            async with http.post(s.base + "/actions/unban", allow_redirects=False,
                                 data={"target": "203.0.113.7"}) as r:
                post = r.status, r.headers.get("WWW-Authenticate")
            async with http.get(s.base + "/v1/status") as r:
                api = r.status, await r.json()
            async with http.get(s.base + "/nothing-here", allow_redirects=False) as r:
                unknown = r.status
            async with http.get(s.base + "/static/style.css") as r:
                css = r.status, r.headers["Content-Type"]
        return pages, post, api, unknown, css

    pages, post, api, unknown, css = run(scenario)
    assert pages == [(303, "/login?next=" + path.replace(":", "%3A")) for path in PAGES]
    assert post == (401, 'Bearer realm="bansink"')
    assert api == (404, {"error": "the control API is served on the control socket only"})
    assert unknown == 401
    assert css == (200, "text/css")  # the stylesheet holds no secret


def test_login_with_the_token_or_the_password_and_out(run):
    password = "correct horse battery staple"

    async def scenario(s):
        async with s.client() as http:
            wrong = await s.login(http, "not the password")
            by_password = await s.login(http, password, nxt="/jails")
            cookie = by_password.headers.getall("Set-Cookie")
            async with http.get(s.base + "/jails", allow_redirects=False) as r:
                inside = r.status
            token = await s.csrf(http)
            async with http.post(s.base + "/logout", data={"csrf": token},
                                 allow_redirects=False) as r:
                out = r.status, r.headers["Location"]
            async with http.get(s.base + "/jails", allow_redirects=False) as r:
                after = r.status
        async with s.client() as http:
            by_token = await s.login(http)
        return wrong.status, by_password.status, by_password.headers["Location"], cookie, \
            inside, out, after, by_token.status

    hashed = hash_password(password)
    assert verify_password(password, hashed) and not verify_password("nope", hashed)
    wrong, ok, where, cookie, inside, out, after, by_token = run(
        scenario, web={"password_hash": hashed})
    assert (wrong, ok, where, inside, out, after, by_token) == \
        (401, 303, "/jails", 200, (303, "/login"), 303, 303)
    session = next(c for c in cookie if c.startswith("bansink_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    assert "Secure" not in session  # plain HTTP on loopback: a Secure cookie would be dropped


def test_a_wrong_host_is_refused_on_tcp_and_on_the_socket(run):
    async def scenario(s):
        port = s.base.rsplit(":", 1)[1]
        got = []
        async with s.client() as http:
            await s.login(http)
            for host in ("evil.example", "127.0.0.1:1", "localhost", "mail.example.org",
                         f"localhost:{port}"):
                async with http.get(s.base + "/bans", headers={"Host": host}) as r:
                    got.append((host.replace(port, "PORT"), r.status))
        async with s.socket_client() as local:  # e.g. DNS rebinding through an ssh tunnel
            for host in ("rebound.example:8742", "localhost:8742", "bansink"):
                async with local.get("http://x/bans", headers={"Host": host}) as r:
                    got.append((host, r.status))
        return got

    assert run(scenario, web={"trusted_hosts": ["mail.example.org"]}) == [
        ("evil.example", 421), ("127.0.0.1:1", 421), ("localhost", 421),
        ("mail.example.org", 200), ("localhost:PORT", 200),
        ("rebound.example:8742", 421), ("localhost:8742", 200), ("bansink", 200)]


def test_the_host_rules(run):
    """The listen address, localhost on its port, trusted_hosts (any port unless one is
    named); on the socket also localhost and bansink on any port."""
    async def scenario(s):
        port = s.base.rsplit(":", 1)[1]
        page = s.page
        tcp = {h: page.host_allowed(h, "tcp") for h in (
            f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1", f"LOCALHOST:{port}",
            "mail.example.org", "mail.example.org:8443", "proxy.example:443",
            "proxy.example:444", "evil.example", "", f"127.0.0.1:{port}@evil")}
        sock = {h: page.host_allowed(h, "socket") for h in (
            "localhost:8742", "127.0.0.1:9", "[::1]:8742", "bansink", "rebound.example")}
        return port, tcp, sock

    port, tcp, sock = run(scenario, web={"trusted_hosts": ["mail.example.org",
                                                           "proxy.example:443"]})
    assert tcp == {f"127.0.0.1:{port}": True, f"localhost:{port}": True, "127.0.0.1": False,
                   f"LOCALHOST:{port}": True, "mail.example.org": True,
                   "mail.example.org:8443": True, "proxy.example:443": True,
                   "proxy.example:444": False, "evil.example": False, "": False,
                   f"127.0.0.1:{port}@evil": False}
    assert sock == {"localhost:8742": True, "127.0.0.1:9": True, "[::1]:8742": True,
                    "bansink": True, "rebound.example": False}


def test_a_post_without_the_csrf_token_or_from_another_site_is_refused(run):
    async def scenario(s):
        async with s.client() as http:
            await s.login(http)
            token = await s.csrf(http)
            results = {}
            for name, data, headers in [
                ("no token", {"target": "203.0.113.7"}, {}),
                ("wrong token", {"target": "203.0.113.7", "csrf": "x" * 43}, {}),
                ("foreign origin", {"target": "203.0.113.7", "csrf": token},
                 {"Origin": "https://evil.example"}),
                ("cross-site fetch", {"target": "203.0.113.7", "csrf": token},
                 {"Sec-Fetch-Site": "cross-site"}),
            ]:
                async with http.post(s.base + "/actions/ban", data=data, headers=headers,
                                     allow_redirects=False) as r:
                    results[name] = r.status
            refused_bans = [b for _, b in s.book.enforcer.running()]
            async with http.post(s.base + "/actions/ban", allow_redirects=False,
                                 data={"target": "203.0.113.7", "csrf": token},
                                 headers={"Origin": s.base}) as r:
                results["same origin"] = r.status, r.headers["Location"]
            await asyncio.sleep(0.05)
            banned = [str(b.target) for _, b in s.book.enforcer.running()]
        async with s.client() as fresh:  # login CSRF: the form's token needs its cookie
            async with fresh.get(s.base + "/login") as r:
                login_token = s.csrf_of(await r.text())
            fresh.cookie_jar.clear()
            async with fresh.post(s.base + "/login", allow_redirects=False,
                                  data={"csrf": login_token, "secret": s.token}) as r:
                results["login without its cookie"] = r.status
        return results, refused_bans, banned

    results, refused, banned = run(scenario)
    assert results == {"no token": 403, "wrong token": 403, "foreign origin": 403,
                       "cross-site fetch": 403, "same origin": (303, "/bans"),
                       "login without its cookie": 403}
    assert refused == [] and banned == ["203.0.113.7"]


def test_every_response_carries_the_security_headers(run):
    async def scenario(s):
        seen = {}
        async with s.client() as http:
            for path in ("/login", "/bans", "/static/style.css"):
                async with http.get(s.base + path, allow_redirects=False) as r:
                    seen[path] = r.headers.copy()
            await s.login(http)
            for path in (*PAGES, "/nothing-here", "/address/not-an-address"):
                async with http.get(s.base + path, allow_redirects=False) as r:
                    seen[path] = r.headers.copy()
        async with s.client() as http:
            async with http.get(s.base + "/bans", headers={"Host": "evil.example"}) as r:
                seen["wrong host"] = r.headers.copy()
        return seen

    seen = run(scenario)
    for path, headers in seen.items():
        assert headers["Content-Security-Policy"] == CSP, path
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["X-Content-Type-Options"] == "nosniff", path
    assert "script-src" not in CSP and "'unsafe-inline'" not in CSP
    assert "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
    assert seen["/bans"]["Cache-Control"] == "no-store"


def test_failed_logins_are_rate_limited(run):
    async def scenario(s):
        statuses = []
        async with s.client() as http:
            for _ in range(5):
                statuses.append((await s.login(http, "wrong guess")).status)
            limited = await s.login(http, s.token)  # right, but too late
            statuses.append(limited.status)
            retry = int(limited.headers["Retry-After"])
        s.page.limiter = LoginLimiter(per_client=5, window=0.2)  # a short window, to see it end
        async with s.client() as http:
            for _ in range(5):
                await s.login(http, "wrong guess")
            again = (await s.login(http, s.token)).status
            await asyncio.sleep(0.25)
            later = (await s.login(http, s.token)).status
        return statuses, retry, again, later

    statuses, retry, again, later = run(scenario)
    assert statuses == [401] * 5 + [429]
    assert 800 <= retry <= 900
    assert (again, later) == (429, 303)


def test_the_limiter_counts_an_ipv6_slash_64_as_one_client_and_caps_the_total():
    limiter = LoginLimiter(per_client=2, overall=5, window=60)
    for i in range(2):
        limiter.failed(f"2001:db8::{i}", 0)
    assert limiter.wait("2001:db8::99", 1) > 0  # the same /64
    assert limiter.wait("2001:db8:1::1", 1) == 0
    for i in range(3):
        limiter.failed(f"198.51.100.{i}", 2)
    assert limiter.wait("203.0.113.1", 3) > 0  # five in all: everyone waits
    assert limiter.wait("203.0.113.1", 61) == 0


def test_attacker_controlled_strings_are_escaped(run):
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'

    async def scenario(s):
        s.book.manual_ban(ipaddress.ip_address("203.0.113.7"), None, 3600, hostile)
        s.book.allow(ipaddress.ip_address("198.51.100.20"), None, hostile)
        await asyncio.sleep(0.05)
        pages = {}
        async with s.client() as http:
            await s.login(http)
            for path in ("/bans", "/entries", "/address/198.51.100.20",
                         "/bans?q=" + hostile, "/login?next=" + hostile):
                async with http.get(s.base + path) as r:
                    pages[path] = await r.text()
        return pages

    pages = run(scenario)
    for path, html in pages.items():
        assert "<script" not in html and "<img" not in html, path
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(2)&gt;"
    assert escaped in pages["/bans"] and escaped in pages["/entries"]
    assert escaped in pages["/address/198.51.100.20"]  # the allow entry's note protects it


def test_redirects_stay_on_the_page(run):
    async def scenario(s):
        async with s.client() as http:
            logged = await s.login(http, nxt="https://evil.example/")
            token = await s.csrf(http)
            where = [logged.headers["Location"]]
            for back in ("//evil.example/x", "https://evil.example", "/\\evil.example",
                         "/bans?page=2"):
                async with http.post(s.base + "/actions/unban", allow_redirects=False,
                                     data={"csrf": token, "target": "203.0.113.9",
                                           "back": back}) as r:
                    where.append(r.headers["Location"])
        return where

    assert run(scenario) == ["/", "/bans", "/bans", "/bans", "/bans?page=2"]


def test_the_socket_is_its_own_login_and_its_session_is_not_valid_on_tcp(run):
    async def scenario(s):
        async with s.socket_client() as local:
            async with local.get("http://localhost/bans") as r:
                status, html = r.status, await r.text()
                cookie = r.cookies["bansink_local"].value
            token = s.csrf_of(html)
            async with local.post("http://localhost/actions/ban", allow_redirects=False,
                                  data={"csrf": token, "target": "203.0.113.8"}) as r:
                banned = r.status
            async with local.post("http://localhost/actions/ban", allow_redirects=False,
                                  data={"target": "203.0.113.9"}) as r:
                no_token = r.status
            async with local.post("http://localhost/v1/ban", json={"target": "203.0.113.10"},
                                  headers={"Origin": "http://localhost:8742"}) as r:
                api_from_a_browser = r.status, await r.json()
        async with s.client() as http:
            async with http.get(s.base + "/bans", allow_redirects=False,
                                cookies={"bansink_local": cookie,
                                         "bansink_session": cookie}) as r:
                replayed = r.status
        return status, banned, no_token, api_from_a_browser, replayed

    status, banned, no_token, api, replayed = run(scenario)
    assert (status, banned, no_token, replayed) == (200, 303, 403, 303)
    assert api[0] == 403 and "browser" in api[1]["error"]


def test_open_paths_follow_the_documented_rule(run):
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="bansink_up 1\n")

    async def scenario(s):
        got = {}
        async with s.client() as http:
            for name, headers in [
                ("loopback", {}),
                ("through a proxy", {"X-Forwarded-For": "203.0.113.7"}),
                ("proxy, bearer", {"X-Forwarded-For": "203.0.113.7",
                                   "Authorization": f"Bearer {s.token}"}),
                ("proxy, wrong bearer", {"X-Forwarded-For": "203.0.113.7",
                                         "Authorization": "Bearer wrong-token-1234567"}),
                ("wrong host", {"Host": "evil.example"}),
            ]:
                async with http.get(s.base + "/metrics", headers=headers) as r:
                    got[name] = r.status
            async with http.get(s.base + "/bans", allow_redirects=False) as r:
                got["a page listed as open"] = r.status
        async with s.socket_client() as local:
            async with local.get("http://localhost/metrics") as r:
                got["socket"] = r.status
        return got

    got = run(scenario, web={"open_paths": ["/metrics", "/bans"]},
              extra_routes=[web.get("/metrics", metrics)])
    assert got == {"loopback": 200, "through a proxy": 401, "proxy, bearer": 200,
                   "proxy, wrong bearer": 401, "wrong host": 421,
                   "a page listed as open": 303, "socket": 200}


def test_a_closed_open_path_needs_a_login(run):
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="bansink_up 1\n")

    async def scenario(s):
        async with s.client() as http:
            async with http.get(s.base + "/metrics") as r:
                anonymous = r.status
            await s.login(http)
            async with http.get(s.base + "/metrics") as r:
                logged_in = r.status
        return anonymous, logged_in

    assert run(scenario, web={"open_paths": []},
               extra_routes=[web.get("/metrics", metrics)]) == (401, 200)


def test_tls_serves_the_page_with_a_secure_cookie(run, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    async def scenario(s):
        async with s.client() as http:
            logged = await s.login(http)
            async with http.get(s.base + "/bans") as r:
                return logged.headers.getall("Set-Cookie"), r.status, \
                    r.headers.get("Strict-Transport-Security")

    cookies, status, hsts = run(scenario, tls=(cert, key))
    session = next(c for c in cookies if c.startswith("bansink_session="))
    assert "Secure" in session and "HttpOnly" in session and "SameSite=Strict" in session
    assert status == 200 and hsts == "max-age=31536000"


@pytest.mark.parametrize(("web_section", "words"), [
    ('listen = "0.0.0.0:8742"', "it needs TLS (tls_certificate, tls_key) and a credential"),
    ('listen = "0.0.0.0:8742"\ntoken = "a-test-token-that-is-long-enough"',
     "it needs TLS (tls_certificate, tls_key), or listen on 127.0.0.1"),
    ('listen = "[::]:8742"\ntls_certificate = "/c.pem"\ntls_key = "/k.pem"',
     "it needs a credential (password_hash or token)"),
    ('listen = "127.0.0.1:8742"', "needs a credential"),
])
def test_a_network_facing_listen_without_tls_and_a_credential_is_refused_at_start(
        tmp_path, web_section, words):
    config = tmp_path / "bansink.toml"
    config.write_text(f'[journal]\npath = ""\n[control]\nsocket = ""\n[web]\n{web_section}\n')
    done = subprocess.run([str(BIN / "bansink"), "run", "--dry-run", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"bansink: bad config: {config}: web: ")
    assert words in lines[0]


def test_behind_a_proxy_on_a_sub_path(run):
    """nginx strips /bansink; the page's links, redirects and cookie carry it."""
    async def scenario(s):
        async with s.client() as http:
            async with http.get(s.base + "/bans", allow_redirects=False) as r:
                to_login = r.headers["Location"]
            async with http.get(s.base + "/login") as r:
                token = s.csrf_of(await r.text())
                nonce = r.headers["Set-Cookie"].split(";")[0]  # Secure: sent by hand
            async with http.post(s.base + "/login", allow_redirects=False,
                                 headers={"Host": "mail.example.org", "Cookie": nonce,
                                          "Origin": "https://mail.example.org"},
                                 data={"csrf": token, "secret": s.token, "next": "/jails"}) as r:
                logged = r.status, r.headers["Location"], r.headers.getall("Set-Cookie")
            sid = next(c for c in logged[2] if c.startswith("bansink_session="))
            async with http.get(s.base + "/jails", headers={  # (Secure: the jar keeps it back)
                    "Host": "mail.example.org", "Cookie": sid.split(";")[0]}) as r:
                html = await r.text()
        return to_login, logged, html

    to_login, (status, where, cookies), html = run(
        scenario, web={"base_path": "/bansink", "trusted_hosts": ["mail.example.org"],
                       "secure_cookie": True})
    assert to_login == "/bansink/login?next=/bans"
    assert (status, where) == (303, "/bansink/jails")
    session = next(c for c in cookies if c.startswith("bansink_session="))
    assert "Path=/bansink/" in session and "Secure" in session
    assert 'href="/bansink/static/style.css"' in html and 'href="/bansink/bans"' in html
    assert 'action="/bansink/logout"' in html


def test_hash_password_prints_a_hash_the_config_takes(tmp_path):
    done = subprocess.run([str(BIN / "bansink"), "hash-password"], input="a long passphrase\n",
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert hashed.startswith("scrypt$16384$8$1$") and verify_password("a long passphrase", hashed)
    config = tmp_path / "bansink.toml"
    config.write_text(f'[web]\nlisten = "127.0.0.1:8742"\npassword_hash = "{hashed}"\n')
    checked = subprocess.run([str(BIN / "bansink"), "check-config", str(config)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    short = subprocess.run([str(BIN / "bansink"), "hash-password"], input="short\n",
                           capture_output=True, text=True, timeout=30)
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
