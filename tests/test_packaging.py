"""The package as a user gets it: a wheel built from the repository, installed into a new
venv next to an `engine.py` and an `actors/` of the user's own, and the public API as
`mypy --strict` sees it from outside the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

import sqlwarden

from .conftest import ROOT, _ci

pytestmark = pytest.mark.slow

#: The repository's folders, which install as `sqlwarden` and `sqlwarden.actors`: never
#: under their own names.
FOLDERS = ("engine", "actors")
#: What `import sqlwarden` must not load: the actor library and the MySQL connector.
HEAVY = ("pykka", "mysql")
#: Left out of the copy the wheel is built from: the repository's venv, builds, data, caches.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "var",
                                     "__pycache__", ".mypy_cache", ".pytest_cache",
                                     ".ruff_cache")
#: Printed by the working folder's own `engine.py` and `actors/` when they are imported.
DECOY = "DECOY IMPORTED"
#: Environment that would let a subprocess see something other than its venv.
LEAKS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV",
         "MYPYPATH")


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in LEAKS}
    env["PYTHONNOUSERSITE"] = "1"
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


def pip(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The pip of the python running the tests, with this machine's pip config."""
    return run(sys.executable, "-m", "pip", *args, cwd=cwd)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class Venv:
    """A venv made with `python -m venv` that has only the wheel and its dependencies."""

    root: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.root / "bin" / "sqlwarden"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps .`, run on a copy of the repository.

    A build writes `build/` and an egg-info next to the sources; in the repository that
    would touch other people's files, and a stale `build/lib` can slip deleted modules
    into the wheel.
    """
    work = tmp_path_factory.mktemp("wheel")
    source = work / "sqlwarden"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
    built = pip("wheel", "--no-deps", "--wheel-dir", work / "dist", ".", cwd=source)
    assert built.returncode == 0, f"pip wheel failed:\n{tail(built.stderr, 40)}"
    (found,) = (work / "dist").glob("sqlwarden-*.whl")
    return found


def requirements(wheel: Path) -> list[str]:
    """The names of the wheel's own dependencies (not its extras')."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    specs = [line.removeprefix("Requires-Dist:").strip() for line in text.splitlines()
             if line.startswith("Requires-Dist:") and "extra ==" not in line]
    name = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
    return [found.group(0) for spec in specs if (found := name.match(spec)) is not None]


@pytest.fixture(scope="module")
def wheelhouse(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's dependencies as wheels, at the versions the tests run with.

    pip gets them as it got them for the project's venv, through this machine's pip
    config (`pip config list`: its local indexes, and PyPI if it reaches it); the new
    venv then installs from here with `--no-index`.
    """
    pins = [f"{name}=={version(name)}" for name in requirements(wheel)]
    house = tmp_path_factory.mktemp("wheelhouse")
    fetched = pip("wheel", "--wheel-dir", house, *pins, cwd=house)
    if fetched.returncode != 0:
        problem = (f"pip could not provide the dependencies {pins} as wheels with this "
                   f"machine's pip config (see `pip config list`):\n{tail(fetched.stderr)}")
        if _ci():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return house


@pytest.fixture(scope="module")
def venv(wheel: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "venv"
    # Without pip of its own: the project's pip installs into it (`--python`), offline.
    made = run(sys.executable, "-m", "venv", "--without-pip", root, cwd=root.parent)
    assert made.returncode == 0, made.stderr
    installed = pip("--python", root / "bin" / "python", "install", "--no-index",
                    "--find-links", wheelhouse, wheel, cwd=root.parent)
    assert installed.returncode == 0, f"installing the wheel failed:\n{tail(installed.stderr)}"
    where = run(root / "bin" / "python", "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root.parent)
    return Venv(root=root, site_packages=Path(where.stdout.strip()))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working folder of every command: it has an `engine.py` and an `actors/` package
    of its own, which say so and refuse when imported."""
    folder = tmp_path_factory.mktemp("service")
    refuse = textwrap.dedent(f"""\
        import sys
        print("{DECOY}: " + __file__, file=sys.stderr)
        raise ImportError("the working folder's " + __name__ + " was imported")
        """)
    (folder / "engine.py").write_text(refuse)
    (folder / "actors").mkdir()
    (folder / "actors" / "__init__.py").write_text(refuse)
    return folder


def in_venv(venv: Venv, code: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    done = run(venv.python, "-c", textwrap.dedent(code), cwd=workdir)
    assert DECOY not in done.stdout + done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    return done


# --- the wheel and the venv -----------------------------------------------------------------


def test_the_wheel_holds_every_file_of_engine_and_actors_under_sqlwarden_and_nothing_else(
        wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        record = archive.read(f"{dist_info}/RECORD").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"sqlwarden", dist_info}
    assert {line.split(",")[0].split("/")[0] for line in record.splitlines() if line} == {
        "sqlwarden", dist_info}
    sources = {f"sqlwarden/{p.relative_to(ROOT / 'engine').as_posix()}"
               for p in (ROOT / "engine").rglob("*") if p.is_file()}
    sources |= {f"sqlwarden/actors/{p.relative_to(ROOT / 'actors').as_posix()}"
                for p in (ROOT / "actors").rglob("*") if p.is_file()}
    sources = {s for s in sources if "__pycache__" not in s}
    assert "sqlwarden/py.typed" in sources
    assert sorted(sources - names) == []
    assert "sqlwarden = sqlwarden.cli:main" in entry_points


def test_the_new_venv_has_sqlwarden_and_no_top_level_engine_or_actors(venv: Venv) -> None:
    listing = {p.name for p in venv.site_packages.iterdir()}
    assert "sqlwarden" in listing
    assert listing & {f"{name}{suffix}" for name in FOLDERS for suffix in ("", ".py")} == set()
    (dist_info,) = [name for name in listing if name.startswith("sqlwarden-")]
    record = (venv.site_packages / dist_info / "RECORD").read_text().splitlines()
    # Paths outside site-packages (`../../../bin/sqlwarden`) are the console script.
    tops = {line.split(",")[0].split("/")[0] for line in record if not line.startswith("../")}
    assert tops == {"sqlwarden", dist_info}
    for pth in venv.site_packages.glob("*.pth"):
        assert str(ROOT) not in pth.read_text(), f"{pth.name} points into the repository"


def test_the_working_folder_s_engine_and_actors_would_be_imported_if_asked_for(
        venv: Venv, workdir: Path) -> None:
    # What makes the other tests mean something: the folder is on the path.
    for name in FOLDERS:
        done = run(venv.python, "-c", f"import {name}", cwd=workdir)
        assert done.returncode == 1 and DECOY in done.stderr


def test_import_sqlwarden_loads_neither_pykka_nor_the_mysql_connector(
        venv: Venv, workdir: Path) -> None:
    done = in_venv(venv, f"""\
        import json, sys
        import sqlwarden
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY + FOLDERS)!r})
        print(json.dumps({{"file": sqlwarden.__file__, "loaded": loaded}}))
        """, workdir)
    seen = json.loads(done.stdout)
    assert Path(seen["file"]).parent == venv.site_packages / "sqlwarden"
    assert seen["loaded"] == []


def test_every_public_name_loads_from_the_wheel_with_engine_and_actors_beside_it(
        venv: Venv, workdir: Path) -> None:
    done = in_venv(venv, """\
        import json, sys
        import sqlwarden
        from sqlwarden import Engine
        loaded = sorted(name for name in sqlwarden.__all__ if getattr(sqlwarden, name))
        print(json.dumps({"engine": sys.modules[Engine.__module__].__file__,
                          "actors": sys.modules["sqlwarden.actors"].__file__,
                          "names": loaded}))
        """, workdir)
    seen = json.loads(done.stdout)
    assert Path(seen["engine"]).is_relative_to(venv.site_packages / "sqlwarden")
    assert Path(seen["actors"]) == venv.site_packages / "sqlwarden" / "actors" / "__init__.py"
    assert seen["names"] == sorted(sqlwarden.__all__)


@pytest.mark.parametrize("how", ["sqlwarden", "python -m sqlwarden"])
def test_the_command_answers_help_and_version(how: str, venv: Venv, workdir: Path) -> None:
    command = [venv.script] if how == "sqlwarden" else [venv.python, "-m", "sqlwarden"]
    helped = run(*command, "--help", cwd=workdir)
    versioned = run(*command, "--version", cwd=workdir)
    for done in (helped, versioned):
        assert DECOY not in done.stderr
        assert done.returncode == 0, done.stderr
    assert helped.stdout.startswith("usage: sqlwarden")
    assert all(f"    {name}" in helped.stdout
               for name in ("run", "status", "task", "fts", "sync", "mirror", "replay"))
    assert versioned.stdout.strip() == f"sqlwarden {sqlwarden.__version__}"


# --- a service that uses the API ------------------------------------------------------------

CONSUMER = '''\
"""A service that embeds sqlwarden."""

from __future__ import annotations

import sys
from typing import Any

from sqlwarden import Engine, Future, NotReady, WriteResult, load_config


def main(config_path: str) -> int:
    config = load_config(config_path)
    with Engine(config, start_tasks=False) as engine:
        pending: Future[WriteResult] = engine.write_many(
            "notes", [{"body": " first "}, {"body": "second"}, {}], wait=False)
        written: WriteResult = pending.get(timeout=30)
        with engine.read() as conn:
            count: int = conn.execute("SELECT count(*) FROM notes").get
        status: dict[str, Any] = engine.status()
        try:
            with engine.read(requires=["tidy"]):
                pass
        except NotReady as exc:
            print(f"{exc.name}: {exc.status}")
    print(f"{written.changes} written, {count} rows, engine {status['state']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
'''

#: The same service with two mistakes, one per line, that mypy must find.
MISTAKES = '''\
from __future__ import annotations

from sqlwarden import Engine, WriteResult, load_config

with Engine(load_config("service.yaml")) as engine:
    engine.write_many(1, [{"body": "x"}])
    result: WriteResult = engine.write_many("notes", [{"body": "x"}], wait=False)
'''

CONFIG = """\
database: {path: data/notes.db}
tables:
  notes:
    columns:
      id: {type: integer, primary_key: true}
      body: text
tasks:
  tidy:
    table: notes
    set: {body: "trim(body)"}
    where: "body <> trim(body)"
"""


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """A folder outside the repository with the service, its mistakes and its config."""
    (tmp_path / "service.py").write_text(CONSUMER)
    (tmp_path / "mistakes.py").write_text(MISTAKES)
    (tmp_path / "service.yaml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def editable() -> Path:
    """The python of the project's own venv, whose sqlwarden is the repository's."""
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run scripts/setup --test", pytrace=False)
    done = run(python, "-c", "import sqlwarden; print(sqlwarden.__file__)", cwd=ROOT.parent)
    assert Path(done.stdout.strip()).resolve() == ROOT / "engine" / "__init__.py", done.stderr
    return python


def mypy(python: Path, module: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The project's mypy, --strict, on `module` against the packages `python` has.

    Verbose, so the log says which file it read `sqlwarden` from.
    """
    return run(sys.executable, "-m", "mypy", "--strict", "--python-executable", python,
               "--cache-dir", cwd / ".mypy_cache", "--no-error-summary", "--verbose", module,
               cwd=cwd)


def read_from(done: subprocess.CompletedProcess[str]) -> Path:
    """The `sqlwarden/__init__.py` mypy read, from its verbose log."""
    found = re.findall(r"Parsing (\S+) \(sqlwarden\)", done.stderr)
    assert len(found) == 1, tail(done.stderr)
    return Path(found[0])


def install_of(name: str, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """The python of the `wheel` venv or of the `editable` install, and where its
    `sqlwarden/__init__.py` is (links resolved)."""
    if name == "wheel":
        venv: Venv = request.getfixturevalue("venv")
        return venv.python, venv.site_packages / "sqlwarden" / "__init__.py"
    return request.getfixturevalue("editable"), ROOT / "engine" / "__init__.py"


def test_the_service_runs_on_the_installed_wheel(venv: Venv, service: Path) -> None:
    done = run(venv.python, "service.py", "service.yaml", cwd=service)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["tidy: pending", "3 written, 3 rows, engine running"]
    assert (service / "data" / "notes.db").exists()


@pytest.mark.parametrize("install", ["wheel", "editable"])
def test_the_service_type_checks_with_mypy_strict_against_the_installed_package(
        install: str, service: Path, request: pytest.FixtureRequest) -> None:
    python, package = install_of(install, request)
    done = mypy(python, "service.py", service)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + tail(done.stderr)
    assert read_from(done).resolve() == package


@pytest.mark.parametrize("install", ["wheel", "editable"])
def test_mypy_strict_finds_both_mistakes_in_a_service_against_the_installed_package(
        install: str, service: Path, request: pytest.FixtureRequest) -> None:
    python, package = install_of(install, request)
    done = mypy(python, "mistakes.py", service)
    assert read_from(done).resolve() == package
    errors = [line for line in done.stdout.splitlines() if ": error: " in line]
    assert done.returncode == 1, done.stdout + tail(done.stderr)
    assert len(errors) == 2, done.stdout
    assert errors[0].startswith('mistakes.py:6: error: No overload variant of "write_many"')
    assert 'argument types "int"' in errors[0]
    assert errors[1].startswith(
        'mistakes.py:7: error: Incompatible types in assignment (expression has type '
        '"Future[WriteResult]", variable has type "WriteResult")')
