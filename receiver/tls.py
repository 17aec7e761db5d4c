"""TLS for the stream listeners, with the standard library's ssl module."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any


def server_context(certificate: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """A TLS 1.2+ server context; with client_ca, senders must present a certificate it
    signed. Raises OSError/ssl.SSLError naming the file that cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_names(peercert: dict[str, Any] | None) -> set[str]:
    """DNS subjectAltNames and the subject CN of a verified peer certificate."""
    if not peercert:
        return set()
    names = {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    for rdn in peercert.get("subject", ()):
        names |= {value for key, value in rdn if key == "commonName"}
    return names


def name_allowed(peercert: dict[str, Any] | None, allowed: Sequence[str]) -> bool:
    """True when no names are required, or the certificate carries one of them (any case)."""
    if not allowed:
        return True
    names = {n.lower() for n in peer_names(peercert)}
    return any(n.lower() in names for n in allowed)
