"""Who may use the web page: password hashes, the login's rate limit, sessions and their CSRF
tokens. No I/O here; bansink/web/gate.py applies it to requests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field

# -- password hashes -------------------------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
"""hashlib.scrypt's cost: 16 MiB of memory and about 50 ms of one core per try (OWASP's
minimum for scrypt is N=2^17 with r=8; 2^14 keeps a login quick on a small host, and the login
rate limit below bounds what guessing can spend)."""
_MAX_N, _MAX_R, _MAX_P = 1 << 20, 32, 16
_MAXMEM = 256 << 20


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
                  salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$SALT$KEY` (base64url), what `bansink hash-password` prints."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def check_hash_format(text: str) -> str:
    """The config's `web.password_hash`, checked without a password: ValueError says why."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a hash from `bansink hash-password` (scrypt$N$r$p$salt$key)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError("not a hash from `bansink hash-password` (a part does not "
                         "decode)") from None
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        raise ValueError(f"scrypt cost out of range (N a power of two up to {_MAX_N}, "
                         f"r 1..{_MAX_R}, p 1..{_MAX_P})")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or key too short")
    return text


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison of scrypt(password) with the stored key. Slow on purpose: call
    it off the event loop (asyncio.to_thread; hashlib releases the GIL while it works)."""
    _, n, r, p, salt, key = check_hash_format(stored).split("$")
    expected = _unb64(key)
    got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                         maxmem=_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(got, expected)


def same_secret(given: str, secret: str) -> bool:
    """A token compared in constant time (of their SHA-256s: the lengths do not leak)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(secret.encode()).digest())


# -- failed logins ---------------------------------------------------------------------------

class LoginLimiter:
    """At most `per_client` failed logins per client (an IPv4 address, an IPv6 /64) and
    `overall` in all within `window` seconds; past either, logins are refused (429) until the
    oldest failure leaves the window, without checking the password. Bounded memory."""

    def __init__(self, per_client: int = 5, overall: int = 30, window: float = 900.0,
                 clients: int = 10_000) -> None:
        self.per_client, self.overall, self.window = per_client, overall, window
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()
        self._max_clients = clients
        self.refused = 0

    @staticmethod
    def key(address: str) -> str:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return address  # a Unix socket's peer, say
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def wait(self, address: str, now: float) -> float:
        """Seconds until this client may try again (0: now)."""
        self._trim(self._all, now)
        waits = [0.0]
        if len(self._all) >= self.overall:
            waits.append(self._all[0] + self.window - now)
        mine = self._clients.get(self.key(address))
        if mine is not None:
            self._trim(mine, now)
            if len(mine) >= self.per_client:
                waits.append(mine[0] + self.window - now)
        wait = max(waits)
        self.refused += wait > 0
        return wait

    def failed(self, address: str, now: float) -> None:
        key = self.key(address)
        mine = self._clients.pop(key, None) or deque()
        mine.append(now)
        self._clients[key] = mine  # the most recent last
        self._all.append(now)
        while len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._clients.pop(self.key(address), None)


# -- sessions --------------------------------------------------------------------------------

@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    via: str
    """"tcp" (a login) or "socket" (a peer of the control socket): valid only there."""
    who: str
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)
    """(kind, text) shown once on the next page: "ok" or "error"."""


class Sessions:
    """Sessions in memory (a restart logs everyone out): idle ones end after `idle` seconds,
    every one after `lifetime`; at most `limit` at once, the least recently used going first."""

    def __init__(self, idle: float = 3600.0, lifetime: float = 12 * 3600.0,
                 limit: int = 256) -> None:
        self.idle, self.lifetime, self.limit = idle, lifetime, limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def new(self, via: str, who: str, now: float) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), via, who,
                          now, now)
        self._by_id[session.id] = session
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return session

    def get(self, sid: str | None, via: str, now: float) -> Session | None:
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        if (session.via != via or now - session.seen > self.idle
                or now - session.created > self.lifetime):
            if now - session.seen > self.idle or now - session.created > self.lifetime:
                del self._by_id[sid]
            return None
        session.seen = now
        self._by_id.move_to_end(sid)
        return session

    def end(self, sid: str) -> None:
        self._by_id.pop(sid, None)


class LoginForms:
    """CSRF for the login form, before there is a session: the form carries HMAC(key, nonce)
    of a random nonce kept in a cookie (a double submit that a third site can neither read nor
    forge). The key lives as long as the process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def nonce(self) -> str:
        return secrets.token_urlsafe(24)

    def token(self, nonce: str) -> str:
        return _b64(hmac.new(self._key, nonce.encode(), hashlib.sha256).digest())

    def valid(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.token(nonce), token)
