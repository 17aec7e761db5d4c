"""The admin's control API: JSON over HTTP on a Unix socket, served by aiohttp in the daemon's
own event loop. `bansink status`, `bans`, `ban`, … are its client; so is
`curl --unix-socket /run/bansink/control.sock http://bansink/v1/status`.

Only root can connect, and the members of `control.group` when one is named: the socket is
0600 (0660 with the group's ownership), in a directory that is not world-writable, and every
connection's peer credentials (SO_PEERCRED) are checked again, so that a socket file made
readable by mistake still refuses strangers.

Requests:
    GET  /v1/status[?jail=J]   GET /v1/bans[?limit=N&offset=N]   GET /v1/allows
    GET  /v1/history?address=A   GET /v1/explain?address=A
    POST /v1/ban       {"target": A|CIDR, "jail"?: J, "for"?: "2h", "note"?: text}
    POST /v1/unban     {"target": A|CIDR}
    POST /v1/allow     {"target": A|CIDR, "for"?: "30d", "note"?: text}
    POST /v1/disallow  {"target": A|CIDR}
    GET  /metrics      Prometheus metrics (bansink/metrics.py)
A refused request answers 400 with {"error": "…"}.

The admin's web page (bansink/web/) is served by this same application: on this socket (the
peer's credentials are its login) and, with `web.listen`, over TCP behind a login. The JSON API
(/v1/…) stays on the socket only, and refuses requests made by a browser (an Origin or
Sec-Fetch-Site header): a page elsewhere cannot reach it through a tunnelled socket.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from .bans import AdminError, BanBook, parse_target
from .config import parse_duration
from .explain import explain, history
from .metrics import Metrics, add_routes
from .store.writer import JournalWriter
from .web.server import PEER_UID, WebError, WebUI

log = structlog.get_logger("bansink")

MAX_NOTE = 500


class ControlError(Exception):
    """The control socket cannot be opened; the message says why."""


def _peer(request: web.Request) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connecting process."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return (0, -1, -1)
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _unix(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


def _member(uid: int, gid: int, group: grp.struct_group | None) -> bool:
    if uid in (0, os.geteuid()):
        return True
    if group is None:
        return False
    if gid == group.gr_gid:
        return True
    try:
        return pwd.getpwuid(uid).pw_name in group.gr_mem
    except KeyError:
        return False


def _text(body: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise AdminError(f"{key!r} is required")
        return None
    if not isinstance(value, str):
        raise AdminError(f"{key!r} must be a string")
    return value


def _duration(body: dict[str, Any]) -> float | None:
    value = body.get("for")
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise AdminError(f"'for': {exc}") from None


def _note(body: dict[str, Any]) -> str:
    note = _text(body, "note") or ""
    if len(note) > MAX_NOTE:
        raise AdminError(f"'note' is longer than {MAX_NOTE} characters")
    return note


def _count(request: web.Request, key: str) -> int | None:
    value = request.query.get(key)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 9:
        raise AdminError(f"{key!r} must be a whole number")
    return int(value)


def _dumps(value: object) -> str:
    return json.dumps(value, check_circular=False)  # (saves a fifth on 100,000 bans)


_BANNED = '{"target": %s, "left": %s}'


def status_json(report: dict[str, Any]) -> str:
    """json.dumps(report) of BanBook.status(), the same text, written faster: each banned
    list's entries are formatted directly (with 100,000 bans, json.dumps took 50-100 ms and
    this takes half that)."""
    jails = []
    for name, jail in report["jails"].items():
        counters = json.dumps({key: value for key, value in jail.items() if key != "banned"})
        banned = ", ".join([_BANNED % (encode_basestring_ascii(b["target"]),
                                       "null" if b["left"] is None else int(b["left"]))
                            for b in jail["banned"]])
        jails.append(f'{encode_basestring_ascii(name)}: {counters[:-1]}, "banned": [{banned}]}}')
    return '{"jails": {' + ", ".join(jails) + "}}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlServer:
    def __init__(self, book: BanBook, journal: JournalWriter | None, path: Path | None,
                 group: str = "", page: WebUI | None = None,
                 metrics: Metrics | None = None) -> None:
        """`path` None: no socket (the page on web.listen only); `page`: the admin's web page,
        mounted on the same application; `metrics`: GET /metrics."""
        self.book, self.journal, self.path = book, journal, path
        self.web = page
        self.metrics = metrics
        self.group: grp.struct_group | None = None
        if group:
            try:
                self.group = grp.getgrnam(group)
            except KeyError:
                raise ControlError(f"control.group: no group {group!r} on this host "
                                   f"(create it: addgroup --system {group})") from None
        self.refused = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.add_routes([
            web.get("/v1/status", self._status),
            web.get("/v1/bans", self._bans),
            web.get("/v1/allows", self._allows),
            web.get("/v1/history", self._history),
            web.get("/v1/explain", self._explain),
            web.post("/v1/ban", self._ban),
            web.post("/v1/unban", self._unban),
            web.post("/v1/allow", self._allow),
            web.post("/v1/disallow", self._disallow),
        ])
        if self.metrics is not None:
            add_routes(app, self.metrics)  # GET /metrics
        if self.web is not None:
            self.web.mount(app)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        unix = _unix(request)
        if unix:
            pid, uid, gid = _peer(request)
            if not _member(uid, gid, self.group):
                self.refused += 1
                log.warning("control_refused", pid=pid, uid=uid, gid=gid)
                return web.json_response({"error": "permission denied"}, status=403)
            request[PEER_UID] = uid
        api = request.path == "/v1" or request.path.startswith("/v1/")
        if self.web is not None and not api:
            return await handler(request)  # the page's own gate (bansink/web/server.py)
        if not unix:
            return web.json_response({"error": "the control API is served on the control "
                                               "socket only"}, status=404)
        if "Origin" in request.headers or "Sec-Fetch-Site" in request.headers:
            log.warning("control_refused", reason="browser", uid=request[PEER_UID])
            return web.json_response({"error": "a request made by a browser is refused: "
                                               "use the web page"}, status=403)
        try:
            return await handler(request)
        except AdminError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except web.HTTPException as exc:  # too large, no such path, wrong method: JSON too
            return web.json_response({"error": exc.text or exc.reason}, status=exc.status)

    async def _bans(self, request: web.Request) -> web.Response:
        """Every running ban, or a page of them (`limit`, `offset`); `total` counts them all."""
        limit, offset = _count(request, "limit"), _count(request, "offset") or 0
        bans = self.book.running(limit, offset)
        total = len(self.book.enforcer.running_keys()) if limit is not None or offset else len(
            bans)
        return web.json_response({"bans": [b._asdict() for b in bans], "total": total},
                                 dumps=_dumps)

    async def _allows(self, request: web.Request) -> web.Response:
        return web.json_response({"allows": self.book.allow_entries()})

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise AdminError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise AdminError("the request body must be a JSON object")
        return body

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(text=status_json(self.book.status(request.query.get("jail"))),
                            content_type="application/json")

    async def _history(self, request: web.Request) -> web.Response:
        return web.json_response(await history(self.book, self.journal,
                                               request.query.get("address", "")))

    async def _explain(self, request: web.Request) -> web.Response:
        return web.json_response(await explain(self.book, self.journal,
                                               request.query.get("address", "")))

    async def _ban(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        target = parse_target(_text(body, "target", True) or "")
        ban = self.book.manual_ban(target, _text(body, "jail"), _duration(body), _note(body))
        log.info("admin_ban", target=str(target), jail=ban.jail, bantime=ban.bantime,
                 uid=_peer(request)[1])
        return web.json_response({"banned": str(target), "jail": ban.jail,
                                  "for": None if ban.bantime == float("inf") else ban.bantime})

    async def _unban(self, request: web.Request) -> web.Response:
        target = parse_target(_text(await self._body(request), "target", True) or "")
        ended = self.book.unban(target)
        log.info("admin_unban", target=str(target), bans=len(ended), uid=_peer(request)[1])
        return web.json_response({
            "unbanned": str(target), "jails": sorted({b.jail for b in ended}),
            "lifted": sorted({str(b.target) for b in ended}),
            "still_banned_by": sorted({f"{b.target} ({b.jail})"
                                       for b in self.book.covering(target)})})

    async def _allow(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        target = parse_target(_text(body, "target", True) or "")
        ended = self.book.allow(target, _duration(body), _note(body))
        log.info("admin_allow", target=str(target), unbanned=len(ended), uid=_peer(request)[1])
        return web.json_response({"allowed": str(target),
                                  "unbanned": sorted({str(b.target) for b in ended})})

    async def _disallow(self, request: web.Request) -> web.Response:
        target = parse_target(_text(await self._body(request), "target", True) or "")
        if not self.book.disallow(target):
            raise AdminError(f"no allow entry for {target}")
        log.info("admin_disallow", target=str(target), uid=_peer(request)[1])
        return web.json_response({"disallowed": str(target)})

    async def start(self) -> None:
        if self.path is not None:
            self._prepare()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            if self.path is not None:
                await self._listen(runner, self.path)
            if self.web is not None:
                await self.web.start_site(runner)
        except WebError as exc:
            await runner.cleanup()
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            raise ControlError(str(exc)) from None
        except ControlError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _listen(self, runner: web.AppRunner, path: Path) -> None:
        site = web.UnixSite(runner, str(path))
        try:
            await site.start()
        except OSError as exc:
            raise ControlError(f"control.socket: cannot listen on {path}: "
                               f"{exc.strerror or exc}") from None
        os.chmod(path, 0o660 if self.group is not None else 0o600)
        if self.group is not None and path.stat().st_gid != self.group.gr_gid:
            os.chown(path, -1, self.group.gr_gid)  # (the unit's own group needs none)
        log.info("control_listening", socket=str(path),
                 group=self.group.gr_name if self.group else None)

    def _prepare(self) -> None:
        """A private directory for the socket; a stale socket from a crash is removed, a live
        one (another bansink) refused."""
        assert self.path is not None
        directory = self.path.parent
        try:
            if not directory.exists():
                directory.mkdir(parents=True, mode=0o750 if self.group else 0o700)
                if self.group is not None:
                    os.chown(directory, -1, self.group.gr_gid)
            mode = directory.stat().st_mode
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                raise ControlError(f"control.socket: {directory} is world-writable: anyone "
                                   f"could replace the socket; choose a private directory")
            if self.path.exists() or self.path.is_symlink():
                if not stat.S_ISSOCK(self.path.lstat().st_mode):
                    raise ControlError(f"control.socket: {self.path} exists and is not a "
                                       f"socket")
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(self.path))
                except OSError:
                    self.path.unlink()  # left by a bansink that stopped without cleaning up
                else:
                    raise ControlError(f"control.socket: {self.path} is in use (is another "
                                       f"bansink running?)")
                finally:
                    probe.close()
        except OSError as exc:
            raise ControlError(f"control.socket: {self.path}: {exc.strerror or exc}") from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            if self.path is not None:
                self.path.unlink(missing_ok=True)
