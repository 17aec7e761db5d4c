"""The admin's web page: server-rendered HTML (Jinja2, autoescaped) on the control API's own
aiohttp application, in the daemon's event loop. Every action calls the same admin service as
the control API and the CLI (bans.BanBook, explain.py).

Access (README, "The web page"):
- On the control socket the peer's credentials are checked by the control server (root, or
  `control.group`); that is the login. A session is still made, for the CSRF token.
- On `web.listen` (TCP, TLS when configured) a login by password or token opens a session:
  cookie HttpOnly, SameSite=Strict (Secure with TLS or `web.secure_cookie`), ended after an
  hour idle or 12 hours. Failed logins are rate-limited (LoginLimiter).
- Every request's Host header must name this page (the listen address, localhost on a loopback
  listen, `web.trusted_hosts`; on the socket: localhost, bansink): DNS rebinding fails.
- Every POST carries the session's CSRF token, and an Origin header, if sent, must be one of
  those hosts too; otherwise 403.
- Every response carries a Content-Security-Policy with no script at all and no inline style,
  frame-ancestors 'none', X-Frame-Options DENY and nosniff.
- `web.open_paths` (default: /metrics), never the page's own paths, are served without a
  login: on the socket; over TCP with `Authorization: Bearer <web.token>`, or to a client
  connecting from a loopback address with no proxy header (X-Forwarded-For, X-Real-IP,
  Forwarded) — a proxy on the same host must send one (README's nginx example does).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import structlog
from aiohttp import web

from bansink.receiver.tls import server_context

from ..bans import AdminError, BanBook, parse_target
from ..config import Config, WebConfig, parse_duration
from ..explain import explain, history
from ..store.writer import JournalWriter
from .auth import LoginForms, LoginLimiter, Session, Sessions, same_secret, verify_password
from .charts import bar_chart
from .data import PER_PAGE, BanQuery, OverviewCache, ban_page, jail_counters, manual_bans

log = structlog.get_logger("bansink")

HERE = Path(__file__).parent
MAX_NOTE = 500
MAX_FIELD = 1024

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
"""No script from anywhere, styles only from the stylesheet (no inline style, no style
attribute), forms post only here, never inside a frame."""

SOCKET_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "bansink"})
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
COOKIE, SOCKET_COOKIE, LOGIN_COOKIE = "bansink_session", "bansink_local", "bansink_login"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PEER_UID = web.RequestKey("bansink.peer_uid", int)
"""The control socket's peer (set by the control server's guard)."""
VIA = web.RequestKey("bansink.via", str)
SESSION = web.RequestKey("bansink.session", Session)
NEW_COOKIE = web.RequestKey("bansink.new_cookie", tuple[str, str])


class WebError(Exception):
    """The page cannot be served as configured (TLS files, the listen address)."""


def _via(request: web.Request) -> str:
    """"socket" for the control socket, "tcp" for web.listen."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return "socket" if sock is not None and sock.family == socket.AF_UNIX else "tcp"


def _split_host(value: str) -> tuple[str, str]:
    """'Name:port' -> ('name', 'port'); '[::1]:80' -> ('[::1]', '80')."""
    value = value.strip().lower()
    m = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(\d*))?", value)
    return (m.group(1), m.group(2) or "") if m else (value, "")


def _local_path(text: str, default: str) -> str:
    """A path on this page to go back to (never another site: no scheme, no //, no \\)."""
    if (not text or len(text) > 500 or not text.startswith("/") or text.startswith("//")
            or "\\" in text or any(ord(c) < 0x21 or ord(c) == 0x7f for c in text)):
        return default
    return text


def _redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser GETs the page (no resubmission on reload)."""
    return web.Response(status=303, headers={"Location": location})


def _when(wall: float | None) -> str:
    if wall is None:
        return "—"
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(text: str | None) -> str:
    """explain.py's ISO times ("2026-11-22T09:20:41+00:00") as the page shows times."""
    if not text:
        return "—"
    try:
        return _when(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return text


def _span(seconds: float | None) -> str:
    """3725 -> '1h 2m'; None -> 'until lifted'."""
    if seconds is None or not math.isfinite(seconds):
        return "until lifted"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.partition("%")[0]) \
            .is_loopback
    except ValueError:
        return False


class WebUI:
    def __init__(self, book: BanBook, journal: JournalWriter | None, config: WebConfig, *,
                 store: Path | None = None,
                 stats: Callable[[], dict[str, object]] = dict,
                 settings: Callable[[], Config] | None = None) -> None:
        """`store`: the journal's file (the overview's charts read it); `stats`: the
        daemon's counters (Daemon.stats); `settings`: the running config (for the jails'
        page)."""
        self.book, self.journal, self.config = book, journal, config
        self._stats, self._settings = stats, settings
        self.sessions = Sessions()
        self.limiter = LoginLimiter()
        self.login_forms = LoginForms()
        self.overview_cache = OverviewCache(store)
        self.base = config.base_path
        self.tls = bool(config.tls_certificate)
        self.secure_cookie = self.tls or config.secure_cookie
        self.open_paths = frozenset(config.open_paths)
        self.hosts = self._allowed_hosts()
        self.logins = 0
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every template, whatever its name: nothing reaches HTML raw
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(when=_when, span=_span, iso=_iso)
        self.env.globals.update(base=self.base, per_page=PER_PAGE)

    def _allowed_hosts(self) -> set[tuple[str, str]]:
        """(host, port) pairs the Host header may name on TCP; port "" matches any."""
        allowed = set()
        if self.config.listen is not None:
            host, port = self.config.listen
            shown = f"[{host}]" if ":" in host else host
            allowed.add((shown.lower(), str(port)))
            if ipaddress.ip_address(host).is_loopback:
                allowed.add(("localhost", str(port)))
        for entry in self.config.trusted_hosts:
            allowed.add(_split_host(entry))
        return allowed

    def host_allowed(self, value: str | None, via: str) -> bool:
        if not value:
            return False
        host, port = _split_host(value)
        if via == "socket" and host in SOCKET_HOSTS:
            return True
        return (host, port) in self.hosts or (host, "") in self.hosts

    # -- the application ---------------------------------------------------------------------

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self._overview, name="page.overview"),
            web.get("/bans", self._bans, name="page.bans"),
            web.get("/address/{address}", self._address, name="page.address"),
            web.get("/entries", self._entries, name="page.entries"),
            web.get("/jails", self._jails, name="page.jails"),
            web.get("/login", self._login_form, name="page.login"),
            web.post("/login", self._login, name="page.login_post"),
            web.post("/logout", self._logout, name="page.logout"),
            web.post("/actions/ban", self._ban, name="page.ban"),
            web.post("/actions/unban", self._unban, name="page.unban"),
            web.post("/actions/allow", self._allow, name="page.allow"),
            web.post("/actions/disallow", self._disallow, name="page.disallow"),
            web.static("/static", HERE / "static", name="page.static"),
        ]

    def mount(self, app: web.Application) -> None:
        """Add the page's routes and its gate to the control API's application."""
        app.add_routes(self.routes())
        app.middlewares.append(self._gate)

    async def start_site(self, runner: web.AppRunner) -> None:
        """Serve the runner's application on web.listen too (if set)."""
        if self.config.listen is None:
            return
        context: ssl.SSLContext | None = None
        if self.tls:
            try:
                context = server_context(self.config.tls_certificate, self.config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise WebError(f"web.tls_certificate, web.tls_key: cannot be loaded: "
                               f"{exc}") from None
        host, port = self.config.listen
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        site = web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise WebError(f"web.listen: cannot listen on {where}: "
                           f"{exc.strerror or exc}") from None
        log.info("web_listening", address=where, tls=self.tls)

    # -- the gate: every request that is not the JSON API passes here ------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/v1" or request.path.startswith("/v1/"):
            return await handler(request)  # the control API's own guard answers for it
        via = _via(request)
        request[VIA] = via
        try:
            response = await self._pass(request, handler, via)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect
                response = web.Response(status=exc.status, headers=exc.headers)
            else:
                response = self._error(request, exc.status, exc.reason)
                for name in ("WWW-Authenticate", "Allow"):
                    if name in exc.headers:
                        response.headers[name] = exc.headers[name]
        except Exception:
            log.exception("web_error", path=request.path)
            response = self._error(request, 500, "Internal Server Error",
                                   "bansink's log says what went wrong.")
        self._harden(request, response)
        return response

    async def _pass(self, request: web.Request, handler: Handler, via: str
                    ) -> web.StreamResponse:
        if not self.host_allowed(request.headers.get("Host"), via):
            log.warning("web_refused", reason="host", host=request.headers.get("Host", "")[:100],
                        remote=request.remote, via=via)
            return self._error(request, 421, "Misdirected Request",
                               "This page does not answer to that host name (web.trusted_hosts "
                               "lists the names it does).")
        route = request.match_info.route
        name = (route.name or "") if route is not None else ""
        page = name.startswith("page.")
        if name == "page.static":
            return await handler(request)
        if not page and request.path in self.open_paths:
            if self._open_to(request, via):
                return await handler(request)
        now = asyncio.get_running_loop().time()
        session = self._session(request, via, now)
        if name in ("page.login", "page.login_post"):
            if session is not None:
                request[SESSION] = session
            return await handler(request)
        if session is None:
            if request.method in ("GET", "HEAD") and page:
                return _redirect(self._login_url(request.path_qs))
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="bansink"'})
        request[SESSION] = session
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            await self._check_csrf(request, session, via)
        response = await handler(request)
        return response

    def _login_url(self, target: str) -> str:
        return f"{self.base}/login?next={quote(target, safe='/')}"

    def _open_to(self, request: web.Request, via: str) -> bool:
        """An open path: the socket's peers, a Bearer token, or a direct loopback client."""
        if via == "socket":
            return True
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and self.config.token:
            return same_secret(auth[7:].strip(), self.config.token)
        return _is_loopback(request.remote) and not any(h in request.headers
                                                        for h in PROXY_HEADERS)

    def _session(self, request: web.Request, via: str, now: float) -> Session | None:
        cookie = SOCKET_COOKIE if via == "socket" else COOKIE
        session = self.sessions.get(request.cookies.get(cookie), via, now)
        if session is None and via == "socket":
            # the peer's credentials were checked by the control server: that is the login
            uid = request.get(PEER_UID)
            session = self.sessions.new("socket", f"uid {uid}", now)
            request[NEW_COOKIE] = (SOCKET_COOKIE, session.id)
        return session

    async def _check_csrf(self, request: web.Request, session: Session, via: str) -> None:
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site", "")
        if fetch_site == "cross-site" or (origin is not None and not self._origin_ok(origin,
                                                                                   via)):
            log.warning("web_refused", reason="origin", origin=(origin or "")[:100],
                        remote=request.remote, via=via)
            raise web.HTTPForbidden(reason="Cross-site request refused")
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not same_secret(token, session.csrf):
            log.warning("web_refused", reason="csrf", path=request.path, remote=request.remote,
                        via=via)
            raise web.HTTPForbidden(reason="Missing or wrong CSRF token")

    def _origin_ok(self, origin: str, via: str) -> bool:
        scheme, _, rest = origin.partition("://")
        return scheme in ("http", "https") and self.host_allowed(rest, via)

    def _harden(self, request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h["Content-Security-Policy"] = CSP
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        # not no-referrer: with it a browser sends `Origin: null` on the page's own forms
        h["Referrer-Policy"] = "same-origin"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        static = request.path.startswith("/static/")
        h["Cache-Control"] = "no-cache" if static else "no-store"
        if self.tls and request.get(VIA) == "tcp":
            h["Strict-Transport-Security"] = "max-age=31536000"
        new = request.get(NEW_COOKIE)
        if new is not None:
            self._set_cookie(response, *new)

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str,
                    max_age: int | None = None) -> None:
        response.set_cookie(name, value, path=f"{self.base}/", httponly=True,
                            samesite="Strict", secure=self.secure_cookie, max_age=max_age)

    # -- rendering -----------------------------------------------------------------------------

    def _render(self, request: web.Request, template: str, status: int = 200,
                **context: Any) -> web.Response:
        session: Session | None = request.get(SESSION)
        flash = []
        if session is not None and template != "login.html":
            flash, session.flash = session.flash, []
        context.setdefault("nav", "")
        html = self.env.get_template(template).render(
            session=session, via=request.get(VIA, "tcp"), flash=flash, path=request.path,
            path_qs=request.path_qs, **context)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def _error(self, request: web.Request, status: int, reason: str,
               detail: str = "") -> web.Response:
        return self._render(request, "error.html", status=status, status_code=status,
                            reason=reason, detail=detail)

    def _back(self, form: Any, default: str = "/bans") -> web.Response:
        back = form.get("back")
        return _redirect(self.base + _local_path(back if isinstance(back, str) else "", default))

    # -- pages ---------------------------------------------------------------------------------

    async def _overview(self, request: web.Request) -> web.Response:
        stored, problem = await self.overview_cache.get()
        charts = []
        if stored is not None:
            charts = [
                bar_chart("Failures per minute, last hour", stored["failures_hour"],
                          tick_every=10, time_format="%H:%M"),
                bar_chart("Bans per minute, last hour", stored["bans_hour"], tick_every=10,
                          time_format="%H:%M"),
                bar_chart("Failures per hour, last day", stored["failures_day"], tick_every=4,
                          time_format="%H:00"),
                bar_chart("Bans per hour, last day", stored["bans_day"], tick_every=4,
                          time_format="%H:00"),
            ]
        stats = self._stats()
        scalars = {k: v for k, v in stats.items() if isinstance(v, int | float | str)}
        tables = {k: v for k, v in stats.items() if isinstance(v, dict)}
        return self._render(request, "overview.html", nav="overview",
                            jails=jail_counters(self.book), sources=self._sources(),
                            charts=charts, stored=stored, store_problem=problem,
                            received=tables.pop("received", {}), drops=tables.pop("drops", {}),
                            other_tables=tables, scalars=scalars)

    def _sources(self) -> dict[str, list[str]]:
        """What each jail reads (fail2ban's "File list")."""
        config = self._settings() if self._settings is not None else None
        if config is None:
            return {}
        if not config.jails:
            return {"roundcube": ["roundcube-security_log"]}
        return {name: [*jail.sources, *jail.filters] for name, jail in config.jails.items()}

    async def _bans(self, request: web.Request) -> web.Response:
        query = BanQuery.parse(request.query)
        page = await ban_page(self.book, query)
        jails = [j.settings.name for j in self.book.pipeline.jails]
        return self._render(request, "bans.html", nav="bans", result=page, query=query,
                            jails=[*jails, "manual"], origins=["jail", "escalation", "manual"],
                            sorts=[("target", "Address / prefix"), ("jail", "Jail"),
                                   ("origin", "Origin"), ("failures", "Failures"),
                                   ("since", "Since"), ("left", "Time left")])

    async def _address(self, request: web.Request) -> web.Response:
        text = request.match_info["address"]
        try:
            explained = await explain(self.book, self.journal, text)
        except AdminError as exc:
            return self._error(request, 400, "Bad Request", str(exc))
        try:
            past = (await history(self.book, self.journal, text))["bans"]
            past_problem = ""
        except AdminError as exc:
            past, past_problem = [], str(exc)
        return self._render(request, "address.html", nav="bans", e=explained, history=past,
                            history_problem=past_problem)

    async def _entries(self, request: web.Request) -> web.Response:
        allows = sorted(self.book.allow_entries(), key=lambda row: str(row["target"]))
        return self._render(request, "entries.html", nav="entries", allows=allows,
                            denies=manual_bans(self.book), now=time.time(),
                            jails=[j.settings.name for j in self.book.pipeline.jails])

    async def _jails(self, request: web.Request) -> web.Response:
        config = self._settings() if self._settings is not None else None
        jails = []
        for jail in self.book.pipeline.jails:
            s = jail.settings
            entry = config.jails.get(s.name) if config is not None else None
            jails.append({"name": s.name, "maxretry": s.maxretry, "findtime": s.findtime,
                          "bantime": s.bantime, "escalation": s.escalation,
                          "entry": entry.model_dump(by_alias=True) if entry is not None
                          else None, "sources": self._sources().get(s.name, [])})
        return self._render(request, "jails.html", nav="jails", jails=jails, config=config)

    # -- login ---------------------------------------------------------------------------------

    async def _login_form(self, request: web.Request) -> web.Response:
        nxt = _local_path(request.query.get("next", ""), "/")
        if request.get(SESSION) is not None:
            return _redirect(self.base + nxt)
        return self._login_page(request, nxt)

    def _login_page(self, request: web.Request, nxt: str, error: str = "",
                    status: int = 200) -> web.Response:
        # the form's nonce is kept while its cookie lives: a second page load (another tab, a
        # reload) must not invalidate the form already shown
        kept = request.cookies.get(LOGIN_COOKIE, "")
        nonce = kept if re.fullmatch(r"[A-Za-z0-9_-]{32}", kept) else self.login_forms.nonce()
        response = self._render(request, "login.html", status=status, nav="login",
                                csrf_login=self.login_forms.token(nonce), next=nxt,
                                error=error)
        self._set_cookie(response, LOGIN_COOKIE, nonce, max_age=3600)
        return response

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if request.get(SESSION) is not None:
            return _redirect(f"{self.base}/")
        remote = request.remote or ""
        loop = asyncio.get_running_loop()
        form = await request.post()
        nxt = _local_path(str(form.get("next", "")), "/")
        wait = self.limiter.wait(remote, loop.time())
        if wait > 0:
            log.warning("web_login_refused", reason="rate_limited", remote=remote)
            response = self._login_page(request, nxt, f"Too many failed logins: try again in "
                                        f"{_span(math.ceil(wait))}.", status=429)
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        token = form.get("csrf")
        if not self.login_forms.valid(request.cookies.get(LOGIN_COOKIE),
                                      token if isinstance(token, str) else None):
            log.warning("web_refused", reason="csrf", path=request.path, remote=remote)
            raise web.HTTPForbidden(reason="Missing or wrong CSRF token")
        secret = form.get("secret")
        who = ""
        if isinstance(secret, str) and 0 < len(secret) <= MAX_FIELD:
            if self.config.token and same_secret(secret, self.config.token):
                who = "token"
            elif self.config.password_hash:
                if await asyncio.to_thread(verify_password, secret, self.config.password_hash):
                    who = "password"
        if not who:
            self.limiter.failed(remote, loop.time())
            log.warning("web_login_failed", remote=remote)
            return self._login_page(request, nxt, "Wrong password or token.", status=401)
        self.limiter.succeeded(remote)
        session = self.sessions.new("tcp", who, loop.time())
        self.logins += 1
        log.info("web_login", remote=remote, by=who)
        response = _redirect(self.base + nxt)
        self._set_cookie(response, COOKIE, session.id)
        response.del_cookie(LOGIN_COOKIE, path=f"{self.base}/")
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        session = request[SESSION]
        self.sessions.end(session.id)
        response = _redirect(f"{self.base}/login" if session.via == "tcp" else f"{self.base}/")
        response.del_cookie(COOKIE if session.via == "tcp" else SOCKET_COOKIE,
                            path=f"{self.base}/")
        return response

    # -- actions: the same calls as the control API's ------------------------------------------

    @staticmethod
    def _field(form: Any, name: str, required: bool = False, limit: int = MAX_FIELD) -> str:
        value = form.get(name)
        text = value.strip() if isinstance(value, str) else ""
        if required and not text:
            raise AdminError(f"{name!r} is required")
        if len(text) > limit:
            raise AdminError(f"{name!r} is longer than {limit} characters")
        return text

    def _duration(self, form: Any) -> float | None:
        text = self._field(form, "for", limit=40)
        if not text:
            return None
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise AdminError(f"'for': {exc}") from None

    def _who(self, request: web.Request) -> dict[str, object]:
        session = request[SESSION]
        return {"web": session.who, "remote": request.remote, "via": session.via}

    async def _act(self, request: web.Request, action: Callable[[Any], str]
                   ) -> web.StreamResponse:
        form = await request.post()
        session = request[SESSION]
        try:
            said = ("ok", action(form))
        except AdminError as exc:
            said = ("error", str(exc))
        session.flash = [*session.flash[-4:], said]  # a client that never looks: bounded
        return self._back(form)

    async def _ban(self, request: web.Request) -> web.StreamResponse:
        def act(form: Any) -> str:
            target = parse_target(self._field(form, "target", True, 100))
            ban = self.book.manual_ban(target, self._field(form, "jail", limit=40) or None,
                                       self._duration(form),
                                       self._field(form, "note", limit=MAX_NOTE))
            log.info("admin_ban", target=str(target), jail=ban.jail, bantime=ban.bantime,
                     **self._who(request))
            lasting = ("until lifted" if math.isinf(ban.bantime)
                       else f"for {_span(ban.bantime)}")
            return f"Banned {target} ({ban.jail}) {lasting}."
        return await self._act(request, act)

    async def _unban(self, request: web.Request) -> web.StreamResponse:
        def act(form: Any) -> str:
            target = parse_target(self._field(form, "target", True, 100))
            ended = self.book.unban(target)
            log.info("admin_unban", target=str(target), bans=len(ended), **self._who(request))
            if not ended:
                return f"{target} was not banned."
            return f"Unbanned {target} ({', '.join(sorted({b.jail for b in ended}))})."
        return await self._act(request, act)

    async def _allow(self, request: web.Request) -> web.StreamResponse:
        def act(form: Any) -> str:
            target = parse_target(self._field(form, "target", True, 100))
            duration = self._duration(form)
            ended = self.book.allow(target, duration, self._field(form, "note", limit=MAX_NOTE))
            log.info("admin_allow", target=str(target), unbanned=len(ended),
                     **self._who(request))
            lasting = "until removed" if duration is None else f"for {_span(duration)}"
            unbanned = f"; unbanned {len(ended)} ban(s)" if ended else ""
            return f"Allowed {target} {lasting}{unbanned}: it is never counted or banned."
        return await self._act(request, act)

    async def _disallow(self, request: web.Request) -> web.StreamResponse:
        def act(form: Any) -> str:
            target = parse_target(self._field(form, "target", True, 100))
            if not self.book.disallow(target):
                raise AdminError(f"no allow entry for {target}")
            log.info("admin_disallow", target=str(target), **self._who(request))
            return f"Removed the allow entry for {target}."
        return await self._act(request, act)
