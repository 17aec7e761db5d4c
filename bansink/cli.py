"""`bansink run | check-config | test | nft remove | hash-password`, and the admin's commands to
the running daemon: `status | bans | allows | ban | unban | allow | disallow | history |
explain`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from bansink.actions.backend import BackendUnavailable, BanBackend
from bansink.actions.dryrun import DryRunBackend
from bansink.actions.nftables import NftablesError, NftablesSet
from bansink.engine.filters.filter import FilterError
from bansink.engine.sources import Source, builtin_filter_sources, builtin_sources, filter_source

from . import ctl
from .config import DEFAULT_PATH, Config, ConfigError, load_config
from .daemon import ListenError, serve
from .jails import jails_and_sources
from .logs import configure_logging
from .logtest import Tally, replay, report, scan_file
from .store.journal import JournalError


def _fail(message: str, code: int = 1) -> int:
    print(f"bansink: {message}", file=sys.stderr)
    return code


def _config(path: Path | None) -> Config:
    """An explicit path must exist; the default path is optional (built-in defaults)."""
    if path is not None:
        return load_config(path)
    if DEFAULT_PATH.exists():
        return load_config(DEFAULT_PATH)
    return Config()


def nftables_backend(config: Config) -> NftablesSet:
    """bansink's table; with `receiver.loopback_users`, it also keeps every other local account
    from sending to bansink's ports over the loopback interface."""
    n, rc = config.nftables, config.receiver
    ports = [("udp", port) for _, port in rc.udp]
    ports += [("tcp", port) for _, port in (*rc.tcp, *rc.tls, *rc.relp, *rc.relp_tls)]
    guarded = bool(rc.loopback_uids)
    return NftablesSet(family=n.family, table=n.table, set4=n.set4, set6=n.set6, chain=n.chain,
                       priority=n.priority,
                       local_ports=sorted(set(ports)) if guarded else (),
                       local_uids=rc.loopback_uids if guarded else None)


def _run(args: argparse.Namespace) -> int:
    config = _config(args.config)
    configure_logging(config.log.format, config.log.level)
    backend: BanBackend = DryRunBackend() if args.dry_run else nftables_backend(config)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    path = args.config or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    reread = (lambda: load_config(path)) if path is not None else None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, backend, reread))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """Validate the file as `run` would load it, filters included: exit 0, or 2 with one line
    per problem."""
    jails, _ = jails_and_sources(load_config(args.path))
    print(f"{args.path}: OK ({len(jails)} jail{'s' if len(jails) != 1 else ''}: "
          f"{', '.join(jail.settings.name for jail in jails)})")
    return 0


def _test(args: argparse.Namespace) -> int:
    """Match a log file like fail2ban-regex; with --jail, replay it through the jail."""
    now = time.time()
    if args.now:
        try:
            now = datetime.fromisoformat(args.now).timestamp()
        except ValueError:
            return _fail(f"--now {args.now!r}: expected an ISO date such as 2005-08-14", 2)
    config = _config(args.config) if args.jail or args.config else Config()
    folders = [*args.filter_path, *(Path(f) for f in config.engine.filter_paths)]
    sources: list[Source] = []
    known = builtin_sources()
    for name in args.source:
        if name not in known:
            return _fail(f"--source {name!r}: unknown (built in: {', '.join(sorted(known))})", 2)
        sources.append(known[name])
    for spec in args.filter:
        try:
            loaded = filter_source(spec, folders)
        except FilterError as exc:
            return _fail(str(exc), 2)
        for note in loaded.filter.notes:
            print(f"note: {note}", file=sys.stderr)
        sources.append(loaded)
    settings = None
    if args.jail:
        jails, jail_sources = jails_and_sources(config)
        chosen = next((jail for jail in jails if jail.settings.name == args.jail), None)
        if chosen is None:
            return _fail(f"--jail {args.jail!r}: not in the config (jails: "
                         f"{', '.join(j.settings.name for j in jails)})", 2)
        settings = chosen.settings
        if not sources:
            sources = [jail_sources[name] for name in chosen.sources]
    routed = not sources  # every built-in source: each line to those of its tag
    if routed:
        sources = list(builtin_filter_sources().values())
    tally = Tally()
    try:
        with open(args.log, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.readlines()
    except OSError as exc:
        return _fail(f"{args.log}: {exc.strerror or exc}")
    found = scan_file(lines, sources, now, tally, keep_missed=args.missed, routed=routed,
                      jobs=args.jobs)
    del lines
    bans = list(replay(found, settings, now)) if settings is not None else None
    report(found, tally, bans, as_json=args.json)
    return 0


def _nft_remove(args: argparse.Namespace) -> int:
    backend = nftables_backend(_config(args.config))
    name = f"{backend.family} {backend.table}"
    print(f"deleted table {name}" if backend.remove() else f"no table {name}: nothing to delete")
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    """Print the scrypt hash of a password for `web.password_hash`: asked twice on a terminal,
    else read as the first line of standard input."""
    from .web.auth import hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password for the web page: ")
        if getpass.getpass("Again: ") != password:
            return _fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 10:
        return _fail("use a password of at least 10 characters", 2)
    print(hash_password(password))
    return 0


def _admin(args: argparse.Namespace) -> int:
    socket = args.socket or _config(args.config).control.socket
    if not socket:
        return _fail("control.socket is \"\" in the config: the daemon has no control socket")
    try:
        print(ctl.run(args, socket))
    except ctl.ControlUnreachable as exc:
        return _fail(str(exc))
    except ctl.Refused as exc:
        return _fail(str(exc))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bansink", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_PATH} if present)")
    run.add_argument("--dry-run", action="store_true", help="decide and log bans, enforce none")
    run.set_defaults(func=_run)
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("path", type=Path)
    check.set_defaults(func=_check_config)
    test = sub.add_parser("test", help="match a log file like fail2ban-regex; with --jail, "
                                       "who would have been banned and when")
    test.add_argument("log", type=Path, help="a log file, or syslog messages one per line")
    test.add_argument("--source", action="append", default=[],
                      help="a built-in source (repeatable); default: all of them")
    test.add_argument("--filter", action="append", default=[],
                      help="a fail2ban filter, NAME[mode=...] or a path (repeatable)")
    test.add_argument("--filter-path", action="append", default=[], type=Path,
                      help="look filters up here first (then engine.filter_paths)")
    test.add_argument("--jail", help="replay through this jail of the config")
    test.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_PATH})")
    test.add_argument("--now", help="ISO date: the year of lines without one (default: today)")
    test.add_argument("--missed", action="store_true", help="list the lines nothing matched")
    test.add_argument("--json", action="store_true", help="JSON Lines, one object per failure")
    test.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                      help="processes reading a large file (default: one per CPU)")
    test.set_defaults(func=_test)
    nft = sub.add_parser("nft", help="manage bansink's nftables table")
    nft_sub = nft.add_subparsers(dest="nft_command", required=True)
    remove = nft_sub.add_parser("remove", help="delete bansink's own table and its bans")
    remove.add_argument("--config", type=Path)
    remove.set_defaults(func=_nft_remove)
    hashing = sub.add_parser("hash-password",
                             help="print the hash of a password for the config's "
                                  "web.password_hash (asked on a terminal, else read from "
                                  "standard input)")
    hashing.set_defaults(func=_hash_password)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="the API's JSON, for scripts")
    common.add_argument("--socket", help="the control socket (default: control.socket of the "
                                         "config)")
    common.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_PATH})")
    ctl.add_commands(sub, common)
    for name in ctl.ADMIN_COMMANDS:
        sub.choices[name].set_defaults(func=_admin)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        # one line per problem, each naming the file and the key: `bansink: bad config: PATH: ...`
        for line in str(exc).splitlines():
            _fail(f"bad config: {line}")
        return 2
    except BackendUnavailable as exc:
        return _fail(str(exc))
    except NftablesError as exc:
        return _fail(f"nftables: {exc}")
    except BrokenPipeError:  # `bansink test big.log | head`: the reader left, as for any tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ListenError as exc:
        return _fail(str(exc))
    except JournalError as exc:
        return _fail(f"journal.path: {exc} (point journal.path at a writable file, or \"\" "
                     f"to run without a journal)")


if __name__ == "__main__":
    sys.exit(main())
