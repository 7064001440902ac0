"""Layering: the core never reaches up into actors, and only the Writer writes."""

from __future__ import annotations

import ast
from pathlib import Path

import apsw

from engine.config import Config
from engine.facade import Engine

from .conftest import ROOT, site_row

TOP_FLOOR = {"engine/facade.py", "engine/cli.py"}


def modules(package: str) -> dict[str, ast.Module]:
    return {f"{package}/{p.name}": ast.parse(p.read_text(), filename=str(p))
            for p in sorted((ROOT / package).glob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def calls_to(tree: ast.Module, dotted: str) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name) else
                    func.id if isinstance(func, ast.Name) else "")
            count += name == dotted
    return count


def test_only_the_facade_and_the_cli_import_actors() -> None:
    offenders = [name for name, tree in modules("engine").items()
                 if name not in TOP_FLOOR
                 and any(m == "actors" or m.startswith("actors.") for m in imported(tree))]
    assert offenders == []


def test_the_core_is_plain_code_without_pykka() -> None:
    # The bus is the transport between actors; everything else in engine/ is
    # logic a test drives synchronously.
    users = {name for name, tree in modules("engine").items()
             if any(m == "pykka" or m.startswith("pykka.") for m in imported(tree))}
    assert users <= {"engine/bus.py", "engine/facade.py"}


def test_actors_do_not_import_the_top_floor() -> None:
    offenders = [name for name, tree in modules("actors").items()
                 if {"engine.facade", "engine.cli"} & imported(tree)]
    assert offenders == []


def test_the_engine_package_imports_nothing_eagerly() -> None:
    # Only the stdlib-only module that must run before `ssl` is imported (see it).
    found = modules("engine")
    assert imported(found["engine/__init__.py"]) <= {"engine.driverlibs",
                                                     "engine.driverlibs.preload"}
    assert not {m for m in imported(found["engine/driverlibs.py"]) if m.startswith("engine")}


def code_nodes(node: ast.AST) -> list[ast.AST]:
    """Every node below `node` except those inside type annotations."""
    found = [node]
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                found.extend(code_nodes(child))
    return found


def mentions(tree: ast.Module, name: str) -> bool:
    """True when code (not an annotation) names `name`: a call, an alias, an import."""
    for node in code_nodes(tree):
        if ((isinstance(node, ast.Name) and node.id == name)
                or (isinstance(node, ast.Attribute) and node.attr == name)
                or (isinstance(node, ast.alias) and name in (node.name, node.asname))):
            return True
    return False


def test_only_the_sqlite_module_opens_connections_and_only_the_writer_opens_read_write() -> None:
    everything = modules("engine") | modules("actors")
    openers = {name for name, tree in everything.items() if mentions(tree, "Connection")
               and name != "engine/sqlite.py"}
    assert openers == set()
    assert all("sqlite3" not in imported(tree) for tree in everything.values())
    writers = {name for name, tree in everything.items() if calls_to(tree, "open_writer")}
    assert writers == {"actors/writer.py"}
    # A new private database only: the replay tool's re-execution.
    scratch = {name for name, tree in everything.items() if calls_to(tree, "open_scratch")}
    assert scratch == {"engine/reexecute.py"}


def our_connections(path: Path) -> list[apsw.Connection]:
    return [c for c in apsw.connections() if Path(c.filename) == path]


def test_a_running_engine_has_exactly_one_read_write_connection(config: Config) -> None:
    with Engine(config) as engine:
        engine.write_many("sites", [site_row(1)])
        with engine.read() as first, engine.read() as second:
            first.execute("SELECT count(*) FROM sites").fetchall()
            second.execute("SELECT count(*) FROM sites").fetchall()
            mine = our_connections(config.database.path)
            writable = [c for c in mine if not c.readonly("main")]
            assert len(mine) == 3
            assert len(writable) == 1
    assert our_connections(config.database.path) == []
