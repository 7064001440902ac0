"""Layering: the core never reaches up into actors or pykka, and only the Writer writes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import apsw

from sqlwarden.config import Config
from sqlwarden.facade import Engine

from .conftest import ROOT, site_row

#: The folders that install as `sqlwarden` and `sqlwarden.actors`.
FOLDERS = {"engine": "sqlwarden", "actors": "sqlwarden.actors"}


def modules(folder: str) -> dict[str, ast.Module]:
    """Every module under `folder`, by its path from the repository root."""
    return {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text(), filename=str(p))
            for p in sorted((ROOT / folder).rglob("*.py"))}


def top_floor(name: str) -> bool:
    """The facade and the CLI: the only modules that build and drive actors."""
    return name.startswith(("engine/facade/", "engine/cli/"))


def uses(tree: ast.Module, package: str) -> bool:
    return any(m == package or m.startswith(f"{package}.") for m in imported(tree))


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


def test_only_the_facade_and_the_cli_import_the_actors() -> None:
    users = {name for name, tree in modules("engine").items() if uses(tree, "sqlwarden.actors")}
    assert users and all(top_floor(name) for name in users)


def test_the_core_is_plain_code_without_pykka() -> None:
    # Everything below the top floor is logic a test drives synchronously; the
    # bus and the actors carry the messages.
    users = {name for name, tree in modules("engine").items() if uses(tree, "pykka")}
    assert all(top_floor(name) for name in users)


def test_actors_do_not_import_the_top_floor() -> None:
    offenders = [name for name, tree in modules("actors").items()
                 if uses(tree, "sqlwarden.facade") or uses(tree, "sqlwarden.cli")]
    assert offenders == []


def test_nothing_imports_the_folders_by_their_own_names() -> None:
    # `engine` and `actors` are folder names; installed, they are `sqlwarden`.
    everything = modules("engine") | modules("actors") | modules("tests")
    offenders = {name for name, tree in everything.items()
                 if any(uses(tree, folder) for folder in FOLDERS)}
    assert offenders == set()


def test_the_package_imports_nothing_eagerly() -> None:
    # Every public name is loaded on first use (`__getattr__`); the imports under
    # `if TYPE_CHECKING:` are for type checkers only.
    tree = modules("engine")["engine/__init__.py"]
    runtime = ast.Module(body=[node for node in tree.body if not (
        isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING")], type_ignores=[])
    assert imported(runtime) == {"__future__", "__future__.annotations", "importlib", "typing",
                                 "typing.TYPE_CHECKING", "typing.Any"}


def test_the_engine_and_the_cli_load_no_openssl_before_the_mirror_s_driver() -> None:
    # So the connector's C extension can load its own OpenSSL when an engine starts
    # with a mirror, in a service as in the `sqlwarden` command (see mirror.driver).
    probe = ("import sys; from sqlwarden import Engine; "
             "from sqlwarden.cli.app import build_parser; build_parser(); "
             "early = [m for m in ('_ssl', '_hashlib') if m in sys.modules]; "
             "from sqlwarden.mirror.driver import load_driver; "
             "print(early, load_driver().HAVE_CEXT)")
    out = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[] True"


def test_a_command_that_finds_no_engine_has_loaded_no_openssl(tmp_path: Path) -> None:
    # `mirror reconcile`, `sync now` and `fts restore` look for a running engine first,
    # then start one of their own.
    config = tmp_path / "m.yaml"
    config.write_text(f"database: {{path: {tmp_path / 'm.db'}}}\n"
                      "tables:\n  t:\n    columns:\n      id: {type: integer, primary_key: true}\n"
                      "mirror: {dsn: 'mysql://u:pw@127.0.0.1:9/d', scope: s}\n")
    probe = ("import sys; from sqlwarden import load_config; "
             "from sqlwarden.cli.client import engine_if_running; "
             f"found = engine_if_running(load_config({str(config)!r})); "
             "print(found, [m for m in ('_ssl', '_hashlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "None []"


def test_importing_sqlwarden_loads_neither_pykka_nor_the_mysql_connector() -> None:
    probe = ("import sys, sqlwarden; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'pykka', 'mysql', 'apsw'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


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
               and name != "engine/db/connect.py"}
    assert openers == set()
    assert all("sqlite3" not in imported(tree) for tree in everything.values())
    writers = {name for name, tree in everything.items() if calls_to(tree, "open_writer")}
    assert writers == {"actors/writer.py"}
    # A new private database only: the replay tool's re-execution.
    scratch = {name for name, tree in everything.items() if calls_to(tree, "open_scratch")}
    assert scratch == {"engine/replay/reexecute.py"}


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
