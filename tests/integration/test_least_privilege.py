"""bansink with what deploy/bansink.service grants and nothing more, without systemd (these tests
never touch the host's services): its own user, the unit's capabilities only (ambient and
bounding sets), its umask, no new privileges, no writable and executable memory (the kernel's
PR_SET_MDWE, MemoryDenyWriteExecute's rule), and, when strace is at hand, no system call the
unit's SystemCallFilter refuses. Also what it says when CAP_NET_ADMIN is missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import BIN, Daemon, namespaces, unit_directives, wait_until

PORT, RELP_PORT = 514, 20514  # 514: below 1024, so CAP_NET_BIND_SERVICE is used too
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
MDWE = ("import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):\n"
        "    raise OSError(ctypes.get_errno(), 'PR_SET_MDWE')\n"
        "os.execvp(sys.argv[1], sys.argv[1:])\n")
CAP_BITS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12}


def unit_capabilities() -> list[str]:
    """The unit's ambient capabilities, as setpriv names them (net_admin, ...)."""
    names = unit_directives()["AmbientCapabilities"][-1].split()
    assert set(names) <= set(CAP_BITS), names
    return [name.removeprefix("CAP_").lower() for name in names]


def setpriv(uid: int, gid: int, caps: list[str]) -> tuple[str, ...]:
    granted = ",".join(["-all", *(f"+{cap}" for cap in caps)])
    return ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            f"--inh-caps={granted}", f"--ambient-caps={granted}", f"--bounding-set={granted}",
            "--no-new-privs")


def mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux 6.3); asked in a child, as it cannot be
    undone."""
    probe = subprocess.run([sys.executable, "-c", MDWE, "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def account() -> Iterator[tuple[int, int]]:
    """A system user and group of its own, as deploy/setup.sh makes `bansink`, deleted after."""
    name = f"bsktest{os.getpid()}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                    "/nonexistent", "--shell", "/usr/sbin/nologin", name], check=True)
    uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True).stdout)
    try:
        gid = int(subprocess.run(["id", "-g", name], capture_output=True, text=True).stdout)
        yield uid, gid
    finally:
        # a test that failed half-way (or strace gone first) may leave a daemon behind: only
        # this test's processes run as this new uid
        for pid in processes_of(uid):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not processes_of(uid), 10, "the user's processes to end")
        subprocess.run(["userdel", name], check=False)


def processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = status_of(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
            if status["Uid"].split()[0] == str(uid) and not status["State"].startswith("Z"):
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    """A directory the user can read (pytest's tmp_path is root's, 0700), with a state
    directory owned by the user, 0700, as the unit's StateDirectory= makes it."""
    made = Path(tempfile.mkdtemp(prefix="bansink-test-"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made)


def config(state: Path) -> str:
    return (f'[receiver]\nudp = ["127.0.0.1:{PORT}"]\ntcp = ["127.0.0.1:{PORT}", "[::1]:{PORT}"]\n'
            f'relp = ["127.0.0.1:{RELP_PORT}"]\n[jail]\nmaxretry = 2\n'
            f'[journal]\npath = "{state}/journal.db"\n[log]\nformat = "json"\n'
            f'[control]\nsocket = "{state}/control.sock"\n')


def login_failed(ip: str) -> str:
    return f'Login failed: client_ip="{ip}", host="imap.example", user="bob", code=0'


def relp_send(message: str) -> bytes:
    """One RELP session: open, one syslog frame, close; the replies."""
    offers = b"relp_version=0\ncommands=syslog"
    body = f"<13>Nov 22 10:00:00 webmail roundcube: {message}".encode()
    frames = (b"1 open %d %s\n" % (len(offers), offers) + b"2 syslog %d %s\n" % (len(body), body)
              + b"3 close 0\n")
    with socket.create_connection(("127.0.0.1", RELP_PORT), timeout=10) as sock:
        sock.sendall(frames)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@dataclass
class Run:
    uid: int
    gid: int
    status: dict[str, str]
    bans: set[str]
    relp_replies: bytes
    reloaded: bool
    exit_code: int
    files: dict[str, os.stat_result]
    """What it left in its state directory after it stopped"""
    control: os.stat_result
    """Its control socket, while it ran"""
    listed: list[dict]
    """`bansink bans --json` asked of it by root"""
    syscalls: set[str] | None


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


@pytest.fixture(scope="module")
def run(account: tuple[int, int], public: Path) -> Run:
    """The daemon as the unit runs it, fed one failure per transport and a reload, then
    stopped; under strace when it is installed."""
    uid, gid = account
    state = public / "state"
    state.mkdir(mode=0o700)
    os.chown(state, uid, gid)
    umask = unit_directives()["UMask"][-1]
    prefix: tuple[str, ...] = ()
    trace = public / "strace.out"
    trace_it = bool(shutil.which("strace"))
    if trace_it:
        prefix += ("strace", "-f", "-qq", "-o", str(trace))
    if mdwe_supported():
        prefix += (sys.executable, "-c", MDWE)
    prefix += (*setpriv(uid, gid, unit_capabilities()),
               "sh", "-c", f'umask {umask} && exec "$@"', "sh")
    (public / "bansink.toml").touch(0o644)  # Daemon writes the config into it: keeps the mode
    with namespaces("priv") as (ns,):
        daemon = Daemon(ns, config(state), public, prefix=prefix)
        pid = daemon.proc.pid  # ip netns exec, the MDWE wrapper, setpriv and sh each exec
        if trace_it:  # except strace: the daemon is its child
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        status = status_of(pid)
        for ip, transport in (("203.0.113.1", "--udp"), ("203.0.113.2", "--tcp")):
            for _ in range(2):
                ns.run("logger", "-n", "127.0.0.1", "-P", str(PORT), transport, "-t",
                       "roundcube", login_failed(ip))
        replies = b"".join(ns.in_namespace(relp_send, login_failed("203.0.113.3"))
                           for _ in range(2))
        wanted = {"203.0.113.1", "203.0.113.2", "203.0.113.3"}
        wait_until(lambda: wanted <= set(ns.set_elements()), 20, "three bans")
        bans = set(ns.set_elements())
        control = (state / "control.sock").lstat()
        listed = json.loads(ns.run(str(BIN / "bansink"), "bans", "--json", "--socket",
                                   str(state / "control.sock")).stdout)["bans"]
        os.kill(pid, signal.SIGHUP)  # the reload path too
        reloaded = bool(wait_until(lambda: daemon.lines("reloaded"), 10, "reloaded line"))
        os.kill(pid, signal.SIGTERM)
        daemon.proc.wait(15)  # strace exits with its tracee's status
        exit_code = daemon.stop()
    files = {path.name: path.lstat() for path in [state, *state.iterdir()]}
    return Run(uid, gid, status, bans, replies, reloaded, exit_code, files, control, listed,
               syscalls_after_exec(trace) if trace.exists() else None)


def syscalls_after_exec(trace: Path) -> set[str]:
    """System calls in an `strace -f` log from the exec of bansink on (not the wrappers')."""
    names: set[str] = set()
    started = False
    call = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)(?:\(| resumed>)")
    for line in trace.read_text(errors="replace").splitlines():
        if not started:
            started = bool(re.search(r'execve\("[^"]*/bansink", .* = 0$', line))
            continue
        if found := call.match(line):
            names.add(found.group(1))
    assert started, "no exec of bansink in the trace"
    return names


def test_it_runs_as_its_own_user_with_only_the_units_capabilities(run: Run):
    assert run.status["Uid"].split() == [str(run.uid)] * 4
    assert run.status["Gid"].split() == [str(run.gid)] * 4
    granted = sum(1 << CAP_BITS[f"CAP_{cap.upper()}"] for cap in unit_capabilities())
    for key in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        assert int(run.status[key], 16) == granted, (key, run.status[key])
    assert run.status["NoNewPrivs"] == "1"


def test_with_only_those_it_bans_from_every_transport_reloads_and_stops_cleanly(run: Run):
    assert run.bans == {"203.0.113.1", "203.0.113.2", "203.0.113.3"}
    assert run.relp_replies.count(b"\n2 rsp 6 200 OK\n") == 2  # the syslog frames, after fsync
    assert run.reloaded and run.exit_code == 0


def test_what_it_creates_is_its_own_and_private(run: Run):
    assert {"state", "journal.db"} <= set(run.files)
    for name, st in run.files.items():
        assert (st.st_uid, st.st_gid) == (run.uid, run.gid), name
        want = 0o700 if name == "state" else 0o600
        assert stat.S_IMODE(st.st_mode) == want, (name, oct(st.st_mode))
    assert "control.sock" not in run.files  # removed when it stopped
    assert stat.S_ISSOCK(run.control.st_mode) and stat.S_IMODE(run.control.st_mode) == 0o600
    assert (run.control.st_uid, run.control.st_gid) == (run.uid, run.gid)


def test_its_control_socket_answers_root(run: Run):
    assert {b["target"] for b in run.listed} == {"203.0.113.1", "203.0.113.2", "203.0.113.3"}


def filter_groups(groups: str) -> set[str]:
    """Every system call a SystemCallFilter= value names (groups expanded, recursively)."""
    names: set[str] = set()
    for item in groups.split():
        if not item.startswith("@"):
            names.add(item)
            continue
        listed = subprocess.run(["systemd-analyze", "syscall-filter", item], capture_output=True,
                                text=True, check=True).stdout
        for line in listed.splitlines()[1:]:
            line = line.strip()
            if line and not line.startswith("#"):
                names |= filter_groups(line)
    return names


def test_it_makes_no_system_call_the_unit_filters(run: Run):
    if run.syscalls is None or not shutil.which("systemd-analyze"):
        pytest.skip("needs strace and systemd-analyze")
    allowed: set[str] = set()
    for value in unit_directives()["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= filter_groups(value[1:])
        else:
            allowed |= filter_groups(value)
    assert len(run.syscalls) > 40  # the trace parsed
    assert run.syscalls - allowed == set()


def test_without_cap_net_admin_it_refuses_to_start_saying_what_is_missing(
        account: tuple[int, int], public: Path):
    uid, gid = account
    state = public / "state-nocap"
    state.mkdir(mode=0o700)
    os.chown(state, uid, gid)
    cfg = public / "nocap.toml"
    cfg.write_text(config(state))
    cfg.chmod(0o644)
    caps = [cap for cap in unit_capabilities() if cap != "net_admin"]
    with namespaces("nocap") as (ns,):
        result = ns.run(*setpriv(uid, gid, caps), str(BIN / "bansink"), "run", "--config",
                        str(cfg), check=False)
        tables = ns.run("nft", "list", "tables").stdout
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.startswith("bansink: ") and len(err.strip().splitlines()) == 1, err
    for words in ("CAP_NET_ADMIN", "root", "AmbientCapabilities", "setpriv", "--dry-run"):
        assert words in err, (words, err)
    assert b"bansink" not in tables
