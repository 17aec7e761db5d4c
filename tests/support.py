"""Test helpers: network namespaces (the only place tests touch nftables), waiting on conditions,
and a bansink daemon run as a real process."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_names = itertools.count()
BIN = Path(sys.executable).parent


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """wait_until for a test's own event loop: poll without blocking it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out after {timeout}s"
        await asyncio.sleep(0.005)


class Netns:
    """A network namespace made for one test; `delete()` removes it and what runs in it."""

    def __init__(self, role: str) -> None:
        self.name = f"bsk{os.getpid()}-{next(_names)}-{role}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")
        self._executor: ThreadPoolExecutor | None = None
        self._procs: list[subprocess.Popen] = []

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, **kw: Any):
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=check,
                              timeout=timeout, capture_output=True, **kw)

    def popen(self, *cmd: str, **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self._procs.append(proc)
        return proc

    def nft_json(self, *args: str) -> dict:
        return json.loads(self.run("nft", "-j", *args).stdout)

    def set_elements(self, table: str = "bansink", name: str = "ban4",
                     family: str = "inet") -> dict[str, dict]:
        """Members of a set: address (or network, "addr/len") -> {"timeout": s, "expires": s};
        bansink's canary (an element that marks the set as not flushed) left out."""
        listed = self.nft_json("list", "set", family, table, name)
        found = {}
        for item in listed["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                body = elem["elem"] if isinstance(elem, dict) and "elem" in elem else {"val": elem}
                if body.get("comment", "").startswith("bansink canary"):
                    continue
                value = body["val"]
                if isinstance(value, dict) and "prefix" in value:
                    value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
                found[str(value)] = body if "timeout" in body or "expires" in body else {}
        return found

    def in_namespace(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn on a thread that lives in this namespace (setns is per thread)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, initializer=_enter, initargs=(self.name,))
        return self._executor.submit(fn, *args).result(timeout=30)

    def delete(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._executor is not None:
            self._executor.shutdown()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _enter(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


def link(a: Netns, a_addrs: list[str], b: Netns, b_addrs: list[str]) -> None:
    """A veth pair between two namespaces with the given addresses (CIDR) on each end."""
    n = next(_names)
    ea, eb = f"bska{n}", f"bskb{n}"
    subprocess.run(["ip", "link", "add", ea, "netns", a.name, "type", "veth", "peer", "name", eb,
                    "netns", b.name], check=True)
    for ns, dev, addrs in ((a, ea, a_addrs), (b, eb, b_addrs)):
        for addr in addrs:
            ns.ip("addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))
        ns.ip("link", "set", dev, "up")


@contextmanager
def namespaces(*roles: str) -> Iterator[list[Netns]]:
    made: list[Netns] = []
    try:
        for role in roles:
            made.append(Netns(role))
        yield made
    finally:
        for ns in made:
            ns.delete()


# -- traffic ---------------------------------------------------------------------------------

class Listener:
    """A dual-stack TCP listener (never accepting: the kernel completes the handshakes) and a
    UDP socket on the server addresses."""

    def __init__(self, ns: Netns, *ports: int) -> None:
        self.sockets = ns.in_namespace(self._open, ports)

    @staticmethod
    def _open(ports: tuple[int, ...]) -> list[socket.socket]:
        made = []
        for port in ports:
            tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            tcp.bind(("::", port))
            tcp.listen(64)
            made.append(tcp)
        return made

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def family_of(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def connects(ns: Netns, source: str, server: str, port: int, quick: float = 0.5) -> bool:
    """One TCP connect from `source`: True when it is established, False when its SYN is
    dropped (nothing answers within `quick` seconds)."""
    def attempt() -> bool:
        with socket.socket(family_of(source), socket.SOCK_STREAM) as s:
            s.settimeout(quick)
            s.bind((source, 0))
            try:
                s.connect((server, port))
            except TimeoutError:
                return False
            return True
    return ns.in_namespace(attempt)


class Daemon:
    """`bansink run` as a real process in a namespace, its JSON log lines readable."""

    def __init__(self, ns: Netns, config: str, tmp: Path, *args: str,
                 prefix: tuple[str, ...] = ()) -> None:
        self.config_path = tmp / "bansink.toml"
        if "[journal]" not in config:  # never the default /var/lib/bansink in tests
            config += f'\n[journal]\npath = "{tmp}/journal.db"\n'
        if "[control]" not in config:  # nor the default /run/bansink
            config += f'\n[control]\nsocket = "{tmp}/control/control.sock"\n'
        self.control = tmp / "control" / "control.sock"
        self.config_path.write_text(config)
        self.log_path = tmp / "bansink.log"
        self._log = self.log_path.open("wb")
        self.proc = ns.popen(*prefix, str(BIN / "bansink"), "run", "--config",
                             str(self.config_path), *args, stdout=self._log,
                             stderr=subprocess.STDOUT)
        wait_until(lambda: self.proc.poll() is not None or self.lines("started"), 15,
                   "bansink to start")
        assert self.proc.poll() is None, self.log_path.read_text()

    def lines(self, event: str | None = None) -> list[dict]:
        found = []
        for raw in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if event is None or entry.get("event") == event:
                found.append(entry)
        return found

    def stats(self) -> dict:
        """Ask the daemon for a fresh `stats` line (SIGUSR1) and return it."""
        before = len(self.lines("stats"))
        self.proc.send_signal(signal.SIGUSR1)
        return wait_until(lambda: self.lines("stats")[before:], 10, "stats line")[-1]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(10)
        self._log.close()
        return code


class Recorder:
    """A receiver Intake that keeps what the listeners deliver."""

    def __init__(self) -> None:
        self.messages: list = []
        self.drops: list = []

    def on_message(self, message, transport: str) -> None:
        self.messages.append(message)

    def on_drop(self, dropped) -> None:
        self.drops.append(dropped)


def make_certificates(d: Path, server_san: str) -> Path:
    """A test CA in `d`, a server certificate with the subjectAltName given (e.g.
    "DNS:proxy.example,IP:192.0.2.1"), and two clients: webmail.example and stranger.example."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=bansink test CA")
    for name, san in (("server", server_san),
                      ("client", "DNS:webmail.example"), ("stranger", "DNS:stranger.example")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={san.split(',')[0][4:]}")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


UNIT = Path(__file__).parents[1] / "deploy" / "bansink.service"


def unit_directives() -> dict[str, list[str]]:
    """deploy/bansink.service's [Service] section: key -> its values in order (a key may be
    given several times)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found
