"""The TOML configuration, validated with pydantic; errors name the key and the problem."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PATH = Path("/etc/bansink/bansink.toml")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(value: Any) -> float:
    """Seconds from a number or a string such as "90", "10m", "1h30m", "250ms"."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration such as '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r} is not a duration (use e.g. 600, '10m', '1h30m')")
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError("expected seconds or a duration such as '10m'")
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _network(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an address or network in CIDR notation, e.g. '192.0.2.0/24'")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None


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


Duration = Annotated[float, BeforeValidator(_duration)]
Network = Annotated[str, BeforeValidator(_network)]
Listen = Annotated[tuple[str, int], BeforeValidator(_listen)]
Port = Annotated[int, Field(gt=0, lt=65536)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    certificate: str = ""
    """PEM file with the server certificate (and chain)."""
    key: str = ""
    """PEM file with its private key."""
    client_ca: str = ""
    """If set, senders must present a certificate signed by this CA (PEM)."""
    client_names: list[str] = []
    """With client_ca: accept only certificates naming one of these (DNS SAN or CN); empty: any
    certificate the CA signed."""


class ReceiverConfig(_Section):
    senders: list[Network] = ["127.0.0.0/8", "::1/128"]
    """Only these hosts may send syslog; everything else is dropped (TCP: closed at accept)."""
    udp: list[Listen] = [("127.0.0.1", 514), ("::1", 514)]
    tcp: list[Listen] = [("127.0.0.1", 514), ("::1", 514)]
    relp: list[Listen] = [("127.0.0.1", 20514), ("::1", 20514)]
    tls: list[Listen] = []
    """Syslog over TLS (RFC 5425, octet-counted), usually port 6514; needs tls_settings."""
    relp_tls: list[Listen] = []
    """RELP over TLS from the first byte (omrelp tls="on"); needs tls_settings."""
    tls_settings: TlsConfig = TlsConfig()
    max_message_size: int = Field(8192, ge=480, le=1 << 20)
    relp_max_frame_size: int = Field(128 * 1024, ge=480, le=16 << 20)
    """RELP DATALEN limit (librelp's default: 128 KiB); a larger frame closes the session."""
    max_connections: int = Field(1024, ge=1)
    max_connections_per_sender: int = Field(64, ge=1)
    idle_timeout: Duration = 600.0
    udp_receive_buffer: int = Field(8 << 20, ge=65536)


class EngineConfig(_Section):
    trusted_proxies: list[Network] = []
    ignoreip: list[Network] = ["127.0.0.0/8", "::1/128"]
    max_tracked: int = Field(1_000_000, ge=1)


class JailConfig(_Section):
    maxretry: int = Field(6, ge=1)
    findtime: Duration = 600.0
    bantime: Duration = 3600.0


class NftablesConfig(_Section):
    family: Literal["inet"] = "inet"
    """Only inet: one table serves IPv4 and IPv6."""
    table: str = Field("bansink", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    set4: str = Field("ban4", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    set6: str = Field("ban6", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    chain: str = Field("input", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    priority: int = Field(-10, ge=-400, le=400)
    ports: list[Port] = []
    """Drop banned clients on these destination ports only (TCP and UDP); empty: all traffic."""
    commit_interval: Duration = 0.01


class JournalConfig(_Section):
    path: str = "/var/lib/bansink/journal.db"
    """SQLite file of the messages that counted; "" turns it off (RELP then answers on receipt,
    without its no-loss guarantee, and counts do not survive a restart)."""
    commit_interval: Duration = 0.005
    retention: Duration = 86400.0
    max_rows: int = Field(1_000_000, ge=1000)
    relp_dedupe: Duration = 600.0
    """How long a RELP message's digest is remembered to drop its resends after a reconnect."""


class LogConfig(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    receiver: ReceiverConfig = ReceiverConfig()
    engine: EngineConfig = EngineConfig()
    jail: JailConfig = JailConfig()
    nftables: NftablesConfig = NftablesConfig()
    journal: JournalConfig = JournalConfig()
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
    def _retention_covers_findtime(self) -> Config:
        if self.journal.path and self.journal.retention < self.jail.findtime:
            raise ValueError(f"journal.retention ({self.journal.retention:g}s) must be at least "
                             f"jail.findtime ({self.jail.findtime:g}s)")
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


def load_config(path: Path) -> Config:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))
