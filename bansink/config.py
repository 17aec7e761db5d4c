"""The TOML configuration, validated with pydantic; errors name the key and the problem.

Every value is bounded, so a file `bansink check-config` accepts also runs: durations are finite
and within a documented range, integers are real integers (not booleans, not floats such as
1e12) within limits, and a network that matches every address (`0.0.0.0/0`, `::/0`) must be
meant (`allow_any = true` in its section)."""

from __future__ import annotations

import functools
import ipaddress
import math
import pwd
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bansink.actions.nftjson import PortRange
from bansink.actions.ratelimit import MAX_WINDOW, RateLimit
from bansink.engine.decisions import MANUAL_JAIL
from bansink.engine.escalation import EscalationSettings, parse_factor, parse_multipliers
from bansink.engine.prefixes import PrefixSettings

from .ports import parse_ports

DEFAULT_PATH = Path("/etc/bansink/bansink.toml")
MAX_FILE_SIZE = 1 << 20
"""A config file larger than this (1 MiB) is refused unread."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

SECOND, DAY = 1.0, 86400.0

MAX_BANTIME = 365 * DAY
"""jail.bantime's upper bound. The kernel refuses longer set-element timeouts with "Numerical
result out of range" (ERANGE): measured in a network namespace (kernel 6.18, nft 1.0.6, the JSON
API bansink uses) the largest timeout accepted was 18,446,744,073 s (about 584 years: the kernel
refuses more than U64_MAX / (NSEC_PER_SEC / HZ) milliseconds, so less with CONFIG_HZ below
1000, about 58 years at HZ=100), and 1e12 s was refused. The nft command line refuses
100000000s ("value too large"). 365 days is far below every one of these."""

MAX_UDP_RECEIVE_BUFFER = 1 << 30
"""1 GiB. The kernel caps SO_RCVBUF at net.core.rmem_max anyway (and doubles what it grants)."""


def _seconds(value: Any) -> float:
    """Seconds from a number or a string such as "90", "10m", "1h30m", "250ms"; finite, > 0."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration such as '10m'")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            text = value.strip().replace(" ", "")
            if re.fullmatch(r"\d+(?:\.\d+)?", text):
                seconds = float(text)
            else:
                parts = _DURATION_PART.findall(text)
                if not parts or "".join(n + u for n, u in parts) != text:
                    raise ValueError(f"{_shown(value)} is not a duration "
                                     f"(use e.g. 600, '10m', '1h30m')")
                seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        else:
            raise ValueError("expected seconds or a duration such as '10m'")
    except OverflowError:
        seconds = math.inf
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{_shown(value)} is not a finite duration")
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def parse_duration(value: Any) -> float:
    """Seconds from a number or a duration such as "2h", "30d" (for the admin's commands)."""
    return _seconds(value)


def _human(seconds: float) -> str:
    """600 -> '10m', 31536000 -> '365d', 0.001 -> '1ms' (for error messages)."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count == round(count):
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def _shown(value: Any) -> str:
    """repr(value), cut short: error messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} characters)"


def _bounded_duration(value: Any, *, low: float, high: float) -> float:
    seconds = _seconds(value)
    if seconds < low:
        raise ValueError(f"{_shown(value)} is too short: at least {_human(low)}")
    if seconds > high:
        limit = _human(high) + ("" if high <= 60 else f" ({high:.0f} seconds)")
        raise ValueError(f"{_shown(value)} is too long: at most {limit}")
    return seconds


def _between(low: float, high: float) -> BeforeValidator:
    """Validation of a duration of [low, high] seconds (low > 0: zero is always refused)."""
    return BeforeValidator(functools.partial(_bounded_duration, low=low, high=high))


def _network(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an address or network in CIDR notation, e.g. '192.0.2.0/24'")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None


def _no_catch_all(section: str) -> Any:
    """A field validator refusing a network that matches every address (0.0.0.0/0, ::/0) unless
    the section's allow_any (declared before the networks) is true."""

    def check(networks: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("allow_any") is True:
            return networks
        for index, network in enumerate(networks):
            if ipaddress.ip_network(network).prefixlen == 0:
                raise ValueError(f"[{index}] {network!r} matches every address; set "
                                 f"{section}.allow_any = true if that is really meant")
        return networks

    return check


def _listen(value: Any) -> tuple[str, int]:
    """'127.0.0.1:514', '[::1]:514' or '0.0.0.0:514'; hosts must be IP literals."""
    if not isinstance(value, str):
        raise ValueError("expected 'ADDRESS:PORT', e.g. '127.0.0.1:514' or '[::1]:514'")
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not 'ADDRESS:PORT' (IPv6 in brackets: '[::1]:514')")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (names are not resolved)") from None
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, int(port)


def _file_name(value: Any) -> str:
    if isinstance(value, str) and "\0" in value:
        raise ValueError("a file name cannot contain a NUL character")
    return value


def _uid(user: str | int) -> int:
    """The uid of a local account name, or a numeric uid checked for range."""
    if isinstance(user, int):
        return user
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        raise ValueError(f"no local user {user!r} (write numeric uids without quotes)") from None


def _local_user(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected a user name or a numeric uid")
    if isinstance(value, int) and not 0 <= value < 0xFFFFFFFF:
        raise ValueError(f"uid {value} is out of range (0 to 4294967294)")
    _uid(value)
    return value


Network = Annotated[str, BeforeValidator(_network)]
Listen = Annotated[tuple[str, int], BeforeValidator(_listen)]
FileName = Annotated[str, BeforeValidator(_file_name)]
LocalUser = Annotated[str | int, BeforeValidator(_local_user)]
Ports = Annotated[tuple[PortRange, ...], BeforeValidator(parse_ports)]
"""fail2ban's port list: `"imap,smtp,imaps,smtps"`, `[25, "submission", "1000:2000"]`."""

CommitInterval = Annotated[float, _between(0.0, 1.0)]
"""A batching tick: more than zero, at most 1 second."""
IdleTimeout = Annotated[float, _between(SECOND, DAY)]
FindTime = Annotated[float, _between(SECOND, 30 * DAY)]
BanTime = Annotated[float, _between(SECOND, MAX_BANTIME)]
Retention = Annotated[float, _between(SECOND, 365 * DAY)]
RelpDedupe = Annotated[float, _between(SECOND, DAY)]


def _count(default: int, low: int, high: int) -> Any:
    """An integer field: strict (no bool, no float, no string), low <= value <= high."""
    return Field(default, strict=True, ge=low, le=high)


_JAIL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    certificate: FileName = ""
    """PEM file with the server certificate (and chain)."""
    key: FileName = ""
    """PEM file with its private key."""
    client_ca: FileName = ""
    """If set, senders must present a certificate signed by this CA (PEM)."""
    client_names: list[str] = []
    """With client_ca: accept only certificates naming one of these (DNS SAN or CN); empty: any
    certificate the CA signed."""


class ReceiverConfig(_Section):
    allow_any: bool = Field(False, strict=True)
    """Must be true for `senders` to list a network matching every address (0.0.0.0/0, ::/0):
    then anyone who reaches a listener can have any address banned."""
    senders: list[Network] = ["127.0.0.0/8", "::1/128"]
    """Only these hosts may send syslog; everything else is dropped (TCP: closed at accept)."""
    loopback_users: list[LocalUser] = ["root"]
    """Local accounts allowed to send syslog to bansink's listeners over the loopback interface;
    enforced with an nftables `meta skuid` rule in bansink's own table. [] lets any local account
    send (then any local user can get any address banned). User names (resolved to uids when the
    config is validated; an unknown name is an error) or numeric uids; see `loopback_uids`."""
    udp: list[Listen] = [("127.0.0.1", 514), ("::1", 514)]
    tcp: list[Listen] = [("127.0.0.1", 514), ("::1", 514)]
    relp: list[Listen] = [("127.0.0.1", 20514), ("::1", 20514)]
    tls: list[Listen] = []
    """Syslog over TLS (RFC 5425, octet-counted), usually port 6514; needs tls_settings."""
    relp_tls: list[Listen] = []
    """RELP over TLS from the first byte (omrelp tls="on"); needs tls_settings."""
    tls_settings: TlsConfig = TlsConfig()
    max_message_size: int = _count(8192, 480, 1 << 20)
    relp_max_frame_size: int = _count(128 * 1024, 480, 16 << 20)
    """RELP DATALEN limit (librelp's default: 128 KiB); a larger frame closes the session."""
    max_connections: int = _count(1024, 1, 1_000_000)
    """TCP, TLS and RELP connections in total: 1 to 1,000,000."""
    max_connections_per_sender: int = _count(64, 1, 1_000_000)
    """Connections from one sender address: 1 to 1,000,000."""
    idle_timeout: IdleTimeout = 600.0
    """Close connections silent for this long: 1 second to 1 day."""
    udp_receive_buffer: int = _count(8 << 20, 65536, MAX_UDP_RECEIVE_BUFFER)
    """SO_RCVBUF in bytes: 64 KiB to 1 GiB (the kernel caps it at net.core.rmem_max anyway)."""

    _loopback_uids: tuple[int, ...] = PrivateAttr(())

    _senders_are_meant = field_validator("senders")(_no_catch_all("receiver"))

    @model_validator(mode="after")
    def _resolve_loopback_users(self) -> ReceiverConfig:
        self._loopback_uids = tuple(dict.fromkeys(_uid(u) for u in self.loopback_users))
        return self

    @property
    def loopback_uids(self) -> tuple[int, ...]:
        """`loopback_users` as uids, resolved when the config was validated (no duplicates)."""
        return self._loopback_uids


class EngineConfig(_Section):
    allow_any: bool = Field(False, strict=True)
    """Must be true for `trusted_proxies` or `ignoreip` to list a network matching every address
    (0.0.0.0/0, ::/0): every client could then pick the address counted, or none is banned."""
    trusted_proxies: list[Network] = []
    ignoreip: list[Network] = ["127.0.0.0/8", "::1/128"]
    max_tracked: int = _count(1_000_000, 1, 100_000_000)
    """Addresses whose failures are counted at once: 1 to 100 million."""
    filter_paths: list[FileName] = ["/etc/fail2ban/filter.d"]
    """Folders where a jail's `filters` named without a path (`postfix[mode=auth]`) are looked
    up, in order."""

    _networks_are_meant = field_validator("trusted_proxies", "ignoreip")(
        _no_catch_all("engine"))


class JailConfig(_Section):
    maxretry: int = _count(6, 1, 1000)
    """Failures within findtime that ban: 1 to 1000."""
    findtime: FindTime = 600.0
    """Window in which failures count: 1 second to 30 days."""
    bantime: BanTime = 3600.0
    """How long a ban lasts: 1 second to 365 days (see MAX_BANTIME for the kernel's limit)."""
    # Repeat offenders, with fail2ban's keys (quoted in TOML: "bantime.increment" = true);
    # engine/escalation.py says what each does.
    bantime_increment: bool = Field(False, alias="bantime.increment", strict=True)
    bantime_factor: float | str = Field(1.0, alias="bantime.factor")
    bantime_formula: str = Field("", alias="bantime.formula", max_length=500)
    bantime_multipliers: str | list[float] = Field("", alias="bantime.multipliers")
    bantime_maxtime: BanTime | None = Field(None, alias="bantime.maxtime")
    bantime_rndtime: BanTime | None = Field(None, alias="bantime.rndtime")
    bantime_overalljails: bool = Field(False, alias="bantime.overalljails", strict=True)
    ipv6_prefix: int = _count(64, 16, 128)
    """IPv6 clients are counted and banned by this prefix: 64 (a host's usual share, RFC 6177)
    or up to 128 (each address alone); engine/prefixes.py."""
    # Several bans inside one wider prefix make it one ban (quoted in TOML: "prefix.count" = 5)
    prefix_count: int = Field(0, alias="prefix.count", strict=True, ge=0, le=100_000)
    """Bans of different addresses (IPv6: prefixes) inside one prefix.ipv4/prefix.ipv6 network
    within prefix.window that ban the whole network; 0: off."""
    prefix_window: FindTime | None = Field(None, alias="prefix.window")
    """Within how long those bans count; unset: the jail's bantime."""
    prefix_ipv4: int = Field(24, alias="prefix.ipv4", strict=True, ge=8, le=31)
    prefix_ipv6: int = Field(48, alias="prefix.ipv6", strict=True, ge=16, le=127)

    @property
    def prefix(self) -> PrefixSettings | None:
        """The `prefix.*` settings; None while prefix.count is 0."""
        if not self.prefix_count:
            return None
        return PrefixSettings(self.prefix_count, self.prefix_window or self.bantime,
                              self.prefix_ipv4, self.prefix_ipv6)

    @model_validator(mode="after")
    def _prefix_holds(self) -> JailConfig:
        if self.prefix_count == 1:
            raise ValueError("prefix.count: 1 would ban the network at the first ban; use 2 or "
                             "more, or 0 for off")
        if self.prefix_count and self.prefix_ipv6 >= self.ipv6_prefix:
            raise ValueError(f"prefix.ipv6: {self.prefix_ipv6} must be wider (smaller) than "
                             f"ipv6_prefix ({self.ipv6_prefix})")
        return self

    @property
    def escalation(self) -> EscalationSettings | None:
        """The `bantime.*` settings; None while bantime.increment is off."""
        if not self.bantime_increment:
            return None
        factor = self.bantime_factor
        multipliers = self.bantime_multipliers
        settings = EscalationSettings(
            increment=True,
            factor=parse_factor(factor) if isinstance(factor, str) else float(factor),
            formula=self.bantime_formula or None,
            multipliers=(parse_multipliers(multipliers) if isinstance(multipliers, str)
                         else tuple(multipliers)),
            maxtime=self.bantime_maxtime, rndtime=self.bantime_rndtime,
            overalljails=self.bantime_overalljails)
        settings.check_bantime(self.bantime)
        return settings

    @model_validator(mode="after")
    def _escalation_holds(self) -> JailConfig:
        try:
            self.escalation  # noqa: B018 (built to be checked)
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith("bantime.") else
                             f"bantime.factor: {message}") from None
        return self


class JailEntry(JailConfig):
    """`[jails.NAME]`: a jail, the sources and filters feeding it, and its own settings."""

    enabled: bool = Field(True, strict=True)
    sources: list[str] = []
    """Built-in sources by name (`bansink test --list` shows them): roundcube-security_log,
    roundcube, dovecot, postfix-sasl, sogo, kerio, kopano, james."""
    filters: list[str] = []
    """fail2ban filters: `postfix[mode=auth]` (looked up in engine.filter_paths) or a path
    such as `/etc/fail2ban/filter.d/dovecot.conf`."""
    tags: list[str] | None = None
    """Only messages with these syslog tags (APP-NAMEs) reach this jail's sources and filters;
    unset: what each built-in source names, and every message for other filters."""
    line: Literal["syslog", "message"] | None = None
    """What this jail's filters read: the syslog file line (`Mmm dd hh:mm:ss host tag[pid]:
    msg`) or the message text alone (a file forwarded by imfile); unset: the built-in
    source's own choice, else syslog."""
    ignoreip: list[Network] = []
    """Addresses this jail never bans (besides engine.ignoreip)."""
    ports: Ports | None = None
    """Its bans drop traffic to these ports only (TCP and UDP), fail2ban style:
    `"imap,smtp,imaps,smtps"` or `[25, 587, "1000:2000"]`; unset: nftables.ports."""

    @model_validator(mode="after")
    def _has_a_source(self) -> JailEntry:
        if self.enabled and not (self.sources or self.filters):
            raise ValueError("name at least one of sources or filters")
        return self


class NftablesConfig(_Section):
    family: Literal["inet"] = "inet"
    """Only inet: one table serves IPv4 and IPv6."""
    table: str = Field("bansink", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    set4: str = Field("ban4", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    set6: str = Field("ban6", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    chain: str = Field("input", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    priority: int = _count(-10, -400, 400)
    ports: Ports = ()
    """Drop banned clients on these destination ports only (TCP and UDP), numbers, service
    names or ranges; empty: all traffic. A jail's own `ports` replace it."""
    commit_interval: CommitInterval = 0.01
    """Bans decided within this tick go to the kernel in one transaction: more than zero, at most
    1 second."""


class RateLimitEntry(_Section):
    """`[ratelimit.NAME]`: new connections (pings, for icmp) from one source address to
    `ports`: the first `connections` within `window` pass, the others until it ends are
    dropped (actions/ratelimit.py). Never applied to ignoreip, senders or trusted proxies."""

    protocol: Literal["tcp", "udp", "icmp"] = "tcp"
    ports: Ports = ()
    connections: int = _count(4, 1, 1_000_000)
    window: Annotated[float, _between(SECOND, MAX_WINDOW)] = 60.0

    def limit(self, name: str) -> RateLimit:
        ranges = [port for port in self.ports if not isinstance(port, int)]
        if ranges:
            raise ValueError(f"ratelimit.{name}.ports: ranges are not supported here; list the "
                             f"ports")
        try:
            return RateLimit(name, self.protocol, tuple(p for p in self.ports
                                                        if isinstance(p, int)),
                             self.connections, float(round(self.window)))
        except ValueError as exc:
            raise ValueError(f"ratelimit.{name}: {str(exc).split(': ', 1)[-1]}") from None


class JournalConfig(_Section):
    path: FileName = "/var/lib/bansink/journal.db"
    """SQLite file of the messages that counted; "" turns it off (RELP then answers on receipt,
    without its no-loss guarantee, and counts do not survive a restart)."""
    commit_interval: CommitInterval = 0.005
    """Rows arriving within this tick go to disk in one commit: more than zero, at most 1 second."""
    unacknowledged_interval: CommitInterval = 0.1
    """Rows no sender waits for (UDP, TCP: no acknowledgement) may wait up to this long to go to
    disk with later ones: fewer commits under load, more of the CPU for reading. A RELP row or a
    ban record goes at the next commit_interval tick, taking the waiting rows with it. Up to
    this much of UDP and TCP rows is lost if bansink is killed (their counts after a restart,
    never a ban). Not less than commit_interval (then every row goes at commit_interval), at
    most 1 second."""
    retention: Retention = 86400.0
    """Rows older than this are deleted: 1 second to 365 days, and at least jail.findtime."""
    max_rows: int = _count(1_000_000, 1000, 100_000_000)
    """Past this many rows the oldest go first: 1000 to 100 million (about 200 bytes a row)."""
    relp_dedupe: RelpDedupe = 600.0
    """How long after a RELP session broke its last frames are matched against resends: 1 second
    to 1 day."""
    history: Retention = 30 * DAY
    """How long an ended ban, and the messages that caused it, are kept (`bansink history`,
    `explain`, and repeat offenders are judged by it; fail2ban's dbpurgeage): 1 second to 365
    days."""
    relp_window: int = _count(1024, 1, 65536)
    """The most frames a RELP sender keeps unacknowledged (omrelp's windowSize; librelp's default
    is 128). After a session breaks, this many of its last frames are matched against the resends
    that open its sender's next session."""


class ControlConfig(_Section):
    socket: FileName = "/run/bansink/control.sock"
    """The admin's Unix socket (`bansink status`, `ban`, `unban`, …; JSON over HTTP, `curl
    --unix-socket` works); "" turns it off. Only root may connect, and members of `group`."""
    group: str = ""
    """A group whose members may use the socket too (e.g. "bansink"); "" for root only."""


_SENDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_SENDER_NAMES = 64


class SenderName(_Section):
    name: str
    """The `sender` label's value: 1 to 32 of a-z, 0-9, _ and -, starting with a letter."""
    networks: list[Network]

    @field_validator("name")
    @classmethod
    def _is_a_label(cls, name: str) -> str:
        if not _SENDER_NAME.fullmatch(name) or name == "other":
            raise ValueError(f"{_shown(name)}: a sender name is 1 to 32 of a-z, 0-9, _ and -, "
                             f"starting with a letter, and not 'other'")
        return name


class MetricsConfig(_Section):
    senders: list[SenderName] = [SenderName(name="loopback",
                                            networks=["127.0.0.0/8", "::1/128"])]
    """Names for the syslog senders (`[[metrics.senders]]`, each a `name` and its `networks`),
    for the `sender` label of `/metrics`. A message's sender is the first name whose networks
    hold its peer, else "other": a label is a name from here, never an address, so the series
    stay few. At most 64 names."""

    @field_validator("senders")
    @classmethod
    def _few_names(cls, senders: list[SenderName]) -> list[SenderName]:
        if len(senders) > MAX_SENDER_NAMES:
            raise ValueError(f"at most {MAX_SENDER_NAMES} names")
        names = [sender.name for sender in senders]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"a name given twice: {', '.join(twice)}")
        return senders


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_MAIL_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}")


def _web_address(value: Any) -> str:
    """An http(s) URL with a host, no spaces or control characters ("" allowed: none)."""
    if not isinstance(value, str):
        raise ValueError("expected an http:// or https:// URL")
    if value == "":
        return value
    if len(value) > 2048 or re.search(r"[\x00-\x20\x7f]", value):
        raise ValueError(f"{_shown(value)} is not a URL (no spaces or control characters, "
                         f"at most 2048 characters)")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"{_shown(value)} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_shown(value)} is not an http:// or https:// URL with a host")
    return value


def _mail_address(value: Any) -> str:
    """A bare address, local@domain: no display name, nothing a header could be split on."""
    if not isinstance(value, str) or not _MAIL_ADDRESS.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a mail address such as root@localhost")
    return value


WebAddress = Annotated[str, BeforeValidator(_web_address)]
MailAddress = Annotated[str, BeforeValidator(_mail_address)]


class WebhookConfig(_Section):
    url: WebAddress = ""
    """Where each notification is POSTed as JSON; "" for none."""
    format: Literal["json", "ntfy", "gotify", "slack", "mattermost"] = "json"
    """The body: bansink's own JSON (`json`), or what the named service reads: ntfy's JSON
    publishing (POST to the server's root URL, with `topic`), Gotify's /message, Slack's and
    Mattermost's incoming webhooks."""
    topic: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,64}$")
    """ntfy's topic (required with format = "ntfy")."""
    headers: list[str] = []
    """Extra request headers, as curl's -H writes them: `["X-Gotify-Key: …"]` (Gotify's
    application token), `["Authorization: Bearer …"]` (an ntfy access token)."""

    @field_validator("headers")
    @classmethod
    def _headers_are_headers(cls, headers: list[str]) -> list[str]:
        for index, header in enumerate(headers):
            name, colon, value = header.partition(":")
            if not colon or not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"[{index}] {_shown(header)} is not 'Name: value' (a name of "
                                 f"A-Z, a-z, 0-9 and -)")
            if len(value) > 4096 or re.search(r"[\x00-\x1f\x7f]", value):
                raise ValueError(f"[{index}] {name}: a header value has no control characters "
                                 f"(line breaks included) and at most 4096 characters")
        return headers

    @property
    def header_map(self) -> dict[str, str]:
        return {name: value.strip() for name, _, value in
                (header.partition(":") for header in self.headers)}

    @model_validator(mode="after")
    def _ntfy_has_topic(self) -> WebhookConfig:
        if self.url and self.format == "ntfy" and not self.topic:
            raise ValueError("topic: required with format = \"ntfy\" (ntfy's JSON publishing "
                             "names the topic in the body; url is the server's root)")
        return self


class MailConfig(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: list[MailAddress] = []
    """Recipients; [] for no mail."""
    sender: MailAddress = Field("root@localhost", alias="from")
    """The From address (TOML key `from`)."""
    transport: Literal["smtp", "sendmail"] = "smtp"
    """`smtp`: SMTP to `smtp` (the local MTA on port 25: works from inside the systemd unit's
    sandbox); `sendmail`: pipe into `sendmail -t -i` (Postfix's and Exim's need privileges the
    unit's NoNewPrivileges= takes away; fine when bansink runs as root without the unit, or
    with a sendmail such as msmtp's or nullmailer's)."""
    smtp: Listen = ("127.0.0.1", 25)
    """The MTA for transport = "smtp", plain SMTP without login (the local MTA)."""
    sendmail: FileName = "/usr/sbin/sendmail"
    subject_prefix: str = Field("[bansink]", max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")


class NotifyConfig(_Section):
    window: Annotated[float, _between(10 * SECOND, DAY)] = 900.0
    """After a ban is sent at once, the bans of the next `window` go out as one digest (and so
    on while bans keep coming; a window without a ban ends it): 10 seconds to 1 day."""
    max_per_hour: int = _count(12, 1, 3600)
    """Hard cap on messages in any hour (per channel, the immediate ones and the digests);
    what it holds back is counted and reported in the next digest: 1 to 3600."""
    top: int = _count(10, 1, 100)
    """Addresses named in a digest, most banned first: 1 to 100."""
    timeout: Annotated[float, _between(SECOND, 120 * SECOND)] = 10.0
    """One attempt to deliver a message, at most: 1 second to 2 minutes."""
    queue: int = _count(100, 1, 10_000)
    """Messages waiting per channel; past that new ones are dropped (and counted): a failing
    or hanging endpoint costs memory only up to this, and never slows a ban."""
    link: WebAddress = ""
    """The admin page's address, put in every message; "" for web.url when configured."""
    webhook: WebhookConfig = WebhookConfig()
    mail: MailConfig = MailConfig()

    @property
    def enabled(self) -> bool:
        return bool(self.webhook.url or self.mail.to)


def _optional_listen(value: Any) -> tuple[str, int] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _listen(value)


_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}"
                   r"[a-z0-9])?")


def _host_name(value: Any) -> str:
    """A Host header's value the page answers to: a name or an IP literal (IPv6 in brackets),
    optionally with :port; lower case."""
    if not isinstance(value, str):
        raise ValueError("expected a host name such as 'mail.example.org' or "
                         "'mail.example.org:443'")
    text = value.strip().lower()
    m = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?|([^:\[\]]+)(?::(\d{1,5}))?", text)
    ok = m is not None
    if m is not None and m.group(1) is not None:
        try:
            ok = ipaddress.ip_address(m.group(1)).version == 6
        except ValueError:
            ok = False
    elif m is not None:
        ok = _HOST.fullmatch(m.group(3)) is not None
    port = m and (m.group(2) or m.group(4))
    if not ok or (port and not 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not a host name or address, optionally with :port")
    return text


def _url_path(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value) \
            or "/../" in value + "/" or "/./" in value + "/":
        raise ValueError(f"{value!r} is not a path such as '/metrics' (no trailing slash)")
    return value


HostName = Annotated[str, BeforeValidator(_host_name)]
UrlPath = Annotated[str, BeforeValidator(_url_path)]


class WebConfig(_Section):
    """`[web]`: the admin's web page (bansink/web/). It is always served on the control socket
    (peer credentials); `listen` also serves it over TCP, behind a login."""

    listen: Annotated[tuple[str, int] | None, BeforeValidator(_optional_listen)] = None
    """'127.0.0.1:8742' or '[::1]:8742'; "" (the default): not on the network. A non-loopback
    address needs tls_certificate, tls_key and a credential (password_hash or token)."""
    tls_certificate: FileName = ""
    """PEM certificate (and chain) to serve the page over HTTPS."""
    tls_key: FileName = ""
    password_hash: str = ""
    """From `bansink hash-password` (scrypt); the password itself is never stored."""
    token: str = Field("", max_length=256)
    """A long random secret (`openssl rand -base64 32`) that logs in like a password, and is
    also accepted as `Authorization: Bearer TOKEN` for the open paths."""
    base_path: str = ""
    """The path prefix a reverse proxy serves the page under ("/bansink"), for the page's
    links, redirects and cookie; the proxy strips it (README, "The web page")."""
    trusted_hosts: list[HostName] = []
    """Host header values accepted besides the listen address itself (and localhost on a
    loopback listen): the names a browser uses to reach the page, e.g. through nginx."""
    open_paths: list[UrlPath] = ["/metrics"]
    """Paths served without a login (never the page's own): on the control socket, to clients
    connecting from a loopback address that no proxy stands in front of, and to anyone with
    `Authorization: Bearer <token>` (README, "The web page")."""
    secure_cookie: bool = Field(False, strict=True)
    """Mark the session cookie Secure even without tls_certificate: set it when a proxy
    serves the page over HTTPS (with TLS here, the cookie is always Secure)."""

    @field_validator("password_hash")
    @classmethod
    def _hash_is_ours(cls, value: str) -> str:
        from .web.auth import check_hash_format

        return check_hash_format(value) if value else value

    @field_validator("token")
    @classmethod
    def _token_is_long(cls, value: str) -> str:
        if value and (len(value) < 16 or not re.fullmatch(r"[\x21-\x7e]+", value)):
            raise ValueError("use at least 16 printable characters without spaces (e.g. "
                             "`openssl rand -base64 32`)")
        return value

    @field_validator("base_path")
    @classmethod
    def _base_is_a_path(cls, value: str) -> str:
        return _url_path(value) if value else value

    @model_validator(mode="after")
    def _safe_to_listen(self) -> WebConfig:
        if bool(self.tls_certificate) != bool(self.tls_key):
            raise ValueError("tls_certificate and tls_key go together")
        if self.listen is None:
            return self
        host, port = self.listen
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credential = bool(self.password_hash or self.token)
        if not ipaddress.ip_address(host).is_loopback:
            missing = [what for what, there in (
                ("TLS (tls_certificate, tls_key)", self.tls_certificate),
                ("a credential (password_hash or token)", credential)) if not there]
            if missing:
                raise ValueError(f"listen {where} is reachable from the network: it needs "
                                 f"{' and '.join(missing)}, or listen on 127.0.0.1 behind a "
                                 f"proxy")
        elif not credential:
            raise ValueError(f"listen {where} needs a credential (password_hash from `bansink "
                             f"hash-password`, or token): without one nobody can log in")
        return self


class LogConfig(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    receiver: ReceiverConfig = ReceiverConfig()
    engine: EngineConfig = EngineConfig()
    jail: JailConfig = JailConfig()
    """The single jail of older configs: with no [jails.NAME], one jail "roundcube" fed by the
    roundcube-security_log plugin."""
    jails: dict[str, JailEntry] = {}
    nftables: NftablesConfig = NftablesConfig()
    ratelimit: dict[str, RateLimitEntry] = {}
    journal: JournalConfig = JournalConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()
    web: WebConfig = WebConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _tls_has_certificate(self) -> Config:
        rc = self.receiver
        if (rc.tls or rc.relp_tls) and not (rc.tls_settings.certificate and rc.tls_settings.key):
            raise ValueError("receiver.tls_settings.certificate and .key are required when "
                             "receiver.tls or receiver.relp_tls lists an address")
        if rc.tls_settings.client_names and not rc.tls_settings.client_ca:
            raise ValueError("receiver.tls_settings.client_names needs client_ca")
        return self

    @model_validator(mode="after")
    def _jails_are_named_once(self) -> Config:
        for name in self.jails:
            if not _JAIL_NAME.fullmatch(name):
                raise ValueError(f"jails.{name}: a jail name is 1 to 32 of a-z, 0-9, _ and -, "
                                 f"starting with a letter")
            if name == MANUAL_JAIL:
                raise ValueError(f"jails.{name}: the name is taken by the admin's bans made "
                                 f"without a jail (`bansink ban ADDRESS`); choose another")
        if self.jails and "jail" in self.model_fields_set:
            raise ValueError(
                "[jail] and [jails.NAME] together: move [jail]'s keys into a [jails.roundcube] "
                "section with sources = [\"roundcube-security_log\"] and delete [jail]")
        if self.jails and not any(jail.enabled for jail in self.jails.values()):
            raise ValueError("jails: every jail is disabled")
        return self

    @model_validator(mode="after")
    def _rate_limits_hold(self) -> Config:
        for name, entry in self.ratelimit.items():
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise ValueError(f"ratelimit.{name}: a rate limit name is 1 to 32 of a-z, 0-9 "
                                 f"and _")
            entry.limit(name)
        return self

    @property
    def rate_limits(self) -> list[RateLimit]:
        return [entry.limit(name) for name, entry in self.ratelimit.items()]

    @property
    def longest_findtime(self) -> float:
        """The longest findtime of the enabled jails: how far back counts must survive."""
        if not self.jails:
            return self.jail.findtime
        return max(jail.findtime for jail in self.jails.values() if jail.enabled)

    @model_validator(mode="after")
    def _retention_covers_findtime(self) -> Config:
        if self.journal.path and self.journal.retention < self.longest_findtime:
            raise ValueError(f"journal.retention ({_human(self.journal.retention)}) must be at "
                             f"least the longest findtime ({_human(self.longest_findtime)})")
        return self


class ConfigError(Exception):
    """A configuration problem, worded for the operator."""


def _key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _explain(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        key = _key(e["loc"])
        lines.append(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def load_config(path: Path) -> Config:
    """Read and validate a TOML file; every problem is a ConfigError naming the file."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError(f"{path}: larger than {MAX_FILE_SIZE} bytes, not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 (line {line}, byte "
                          f"{exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    return parse_config(data, str(path))
