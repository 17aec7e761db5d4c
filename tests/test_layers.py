"""The boundaries DESIGN.md draws: cores do no I/O, and only `bansink` is installed."""

import ast
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
IO_MODULES = {"asyncio", "socket", "structlog", "nftables", "asyncio_dgram", "ssl", "sqlite3",
              "time", "subprocess"}
CORES = ["receiver/syslog.py", "receiver/framing.py", "receiver/intake.py",
         *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "engine").rglob("*.py")))]


# pure functions a core may take from an I/O module
PURE = {("socket", "inet_pton"), ("socket", "inet_ntop"), ("socket", "AF_INET"),
        ("socket", "AF_INET6")}


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


FOLDERS = ("receiver", "engine", "actions")
ALLOWED = {"receiver": set(), "engine": {"receiver"}, "actions": {"engine"}}
"""Which other parts of the project each folder may import; the root (bansink/) may import
any. Nothing points back up: receiver <- engine <- actions <- root."""


def project_imports(path: Path, folder: str) -> set[str]:
    """The parts of the project a module imports: a folder name, or "root"."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the folder, or above it
                depth = len(path.relative_to(ROOT / folder).parts) - 1
                if node.level <= depth + 1:
                    continue
                modules = [f"bansink.{node.module or ''}"]
            else:
                modules = [node.module or ""]
        else:
            continue
        for module in modules:
            if module == "bansink" or module.startswith("bansink."):
                head = module.split(".")[1] if "." in module else ""
                parts.add(head if head in FOLDERS else "root")
    return parts - {folder}


@pytest.mark.parametrize(
    "path", [p for f in FOLDERS for p in sorted((ROOT / f).rglob("*.py"))],
    ids=lambda p: str(p.relative_to(ROOT)))
def test_each_folder_imports_only_the_layers_below_it(path):
    folder = path.relative_to(ROOT).parts[0]
    assert project_imports(path, folder) <= ALLOWED[folder]


def test_the_layer_check_sees_a_forbidden_import(tmp_path):
    fake = tmp_path / "x.py"
    fake.write_text("from bansink import __version__\nfrom bansink.engine.jail import Jail\n")
    assert project_imports(fake, "receiver") == {"root", "engine"}


def test_a_plain_checkout_imports_through_the_folder_links():
    for name in FOLDERS:
        link = ROOT / "bansink" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve()


def test_distribution_claims_only_the_bansink_namespace():
    dist = distribution("bansink")
    top = (dist.read_text("top_level.txt") or "").split()
    assert top in ([], ["bansink"])
    import bansink.actions.nftables
    import bansink.engine.jail
    import bansink.receiver.framing

    for module in (bansink.engine.jail, bansink.receiver.framing, bansink.actions.nftables):
        assert module.__name__.startswith("bansink.")
