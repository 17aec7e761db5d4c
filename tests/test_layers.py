"""The boundaries DESIGN.md draws: cores do no I/O, and only `bansink` is installed."""

import ast
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
IO_MODULES = {"asyncio", "socket", "structlog", "nftables", "asyncio_dgram", "ssl", "sqlite3",
              "time", "subprocess"}
CORES = ["receiver/syslog.py", "receiver/framing.py", "receiver/intake.py",
         *(str(p.relative_to(ROOT)) for p in (ROOT / "engine").glob("*.py"))]


# pure functions a core may take from an I/O module
PURE = {("socket", "inet_pton"), ("socket", "AF_INET"), ("socket", "AF_INET6")}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = node.module.split(".")[0]
            if any((module, a.name) not in PURE for a in node.names):
                names.add(module)
    return names


@pytest.mark.parametrize("core", CORES)
def test_sans_io_cores_import_no_io(core):
    assert not imported(ROOT / core) & IO_MODULES


def test_engine_never_imports_actions_and_actions_never_import_receiver():
    for path in (ROOT / "engine").glob("*.py"):
        assert not any("actions" in line for line in path.read_text().splitlines()
                       if line.startswith(("import", "from")))
    for path in (ROOT / "actions").glob("*.py"):
        assert not any("receiver" in line for line in path.read_text().splitlines()
                       if line.startswith(("import", "from")))


def test_distribution_claims_only_the_bansink_namespace():
    dist = distribution("bansink")
    top = (dist.read_text("top_level.txt") or "").split()
    assert top in ([], ["bansink"])
    import bansink.actions.nftables
    import bansink.engine.jail
    import bansink.receiver.framing

    for module in (bansink.engine.jail, bansink.receiver.framing, bansink.actions.nftables):
        assert module.__name__.startswith("bansink.")
