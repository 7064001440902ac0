"""README.md as a newcomer meets it: every Python example runs on the demo's config and
does what its comments say, and the command list matches the `sqlwarden` command."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, count_rows, read_only
from .support.mariadb import MirrorDb

README = ROOT / "README.md"

#: The demo's generator, cut to a tenth in the copy the examples run on, so that an
#: example that ingests it takes a second, not several.
REGISTRY_ROWS, OBSERVATION_ROWS = 2_000, 20_000
#: (line in configs/demo.yaml, the same line in the copy)
SMALLER = (("registry_rows: 20000", f"registry_rows: {REGISTRY_ROWS}"),
           ("observation_rows: 200000", f"observation_rows: {OBSERVATION_ROWS}"))
#: The config the mirror example loads: demo.yaml plus the README's `mirror:` lines.
MIRROR_CONFIG = "configs/demo-mirror.yaml"


@dataclass(frozen=True)
class Block:
    """One fenced code block of README.md."""

    lang: str
    #: The README line of the block's first line of code.
    line: int
    text: str

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text.strip() else ""


def fenced_blocks(text: str) -> list[Block]:
    """Every ``` block in `text`, with its language (empty for a plain fence)."""
    blocks: list[Block] = []
    lang: str | None = None
    start, lines = 0, list[str]()
    for number, line in enumerate(text.splitlines(), 1):
        if lang is None:
            if line.startswith("```"):
                lang, start, lines = line[3:].strip(), number + 1, []
        elif line.rstrip() == "```":
            blocks.append(Block(lang, start, "".join(f"{code}\n" for code in lines)))
            lang = None
        else:
            lines.append(line)
    assert lang is None, f"README.md: the ``` block at line {start - 1} is never closed"
    return blocks


BLOCKS = fenced_blocks(README.read_text())
PYTHON = [block for block in BLOCKS if block.lang == "python"]


# --- what each example must leave behind --------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """What an example printed, and the folder it ran in (its working directory)."""

    out: list[str]
    folder: Path
    mirror: MirrorDb | None

    @property
    def database(self) -> Path:
        # demo.yaml puts its data in ../var, taken from the config file's folder.
        return self.folder / "var" / "demo.db"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = read_only(self.database)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


#: Checks by the first line of the example they check.
CHECKS: dict[str, Callable[[Ran], None]] = {}


def checks(first_line: str) -> Callable[[Callable[[Ran], None]], Callable[[Ran], None]]:
    def register(check: Callable[[Ran], None]) -> Callable[[Ran], None]:
        CHECKS[first_line] = check
        return check
    return register


@checks("# What a service imports: every public name is in sqlwarden.__all__.")
def public_names(ran: Ran) -> None:
    assert ran.out == ["True", "True True"]


@checks("# Announce a bulk catch-up: FTS upkeep of the tables it writes waits until it ends.")
def fts_catch_up(ran: Ran) -> None:
    assert ran.out == ["True ('registry_fts',)", "fts:registry deferred", "live", "10000"]
    # The index answers for the new rows, and its triggers are back.
    assert ran.query("SELECT count(*) FROM registry_fts WHERE registry_fts MATCH 'kingfisher'"
                     ) == [(10_000,)]
    triggers = ran.query("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                         "AND tbl_name = 'registry' ORDER BY name")
    assert triggers == [("registry_fts_ad",), ("registry_fts_ai",), ("registry_fts_au",)]


@checks("# Writes, reads and a checkpoint on the demo's database.")
def writes_and_reads(ran: Ran) -> None:
    assert ran.out == ["168", "('upper weir', 'Gauge fitted, seal checked.')", "169",
                       f"running {ran.database.resolve()}"]
    assert ran.query("SELECT org, name, body, updated_at FROM registry") == [
        ("Alder Grid", "upper weir", "Gauge fitted, seal checked.", "2025-01-02T00:00:00Z")]
    # The batch removed the reading without a value; the seven days came in whole.
    assert ran.query("SELECT value, count(*) FROM observations GROUP BY value ORDER BY value"
                     ) == [(1.5, 1), (2.0, 168)]


@checks("# Tasks and sources: a task declared in Python, the demo's source run on request.")
def tasks_and_sources(ran: Ran) -> None:
    ingested = REGISTRY_ROWS + OBSERVATION_ROWS
    assert ran.out[:5] == [f"demo ok {ingested}", "registry.names pending",
                           "paused", "cancelled", "running"]
    assert sorted(ran.out[5:9]) == ["capitalise_names done", "observation_units done",
                                    "org_directory done", "registry_last_seen done"]
    (first_name,) = ran.query("SELECT name FROM registry WHERE id = 1")[0]
    assert first_name[0].isupper() and ran.out[9] == first_name
    assert ran.out[10:] == ["0", f"[(2, 'incremental', 0), (1, 'full', {ingested})]"]
    # Every task changed what it was declared to change.
    assert count_rows(ran.database, "registry") == REGISTRY_ROWS
    assert count_rows(ran.database, "observations") == OBSERVATION_ROWS
    assert ran.query("SELECT count(*) FROM registry WHERE name GLOB '[a-z]*'") == [(0,)]
    assert ran.query("SELECT count(*) FROM observations WHERE unit IN ('degC', '%RH')"
                     ) == [(0,)]
    assert ran.query("SELECT count(*) FROM registry WHERE last_seen IS NULL AND EXISTS "
                     "(SELECT 1 FROM observations o WHERE o.registry_id = registry.id)"
                     ) == [(0,)]
    assert ran.query("SELECT count(*) FROM orgs") == ran.query(
        "SELECT count(DISTINCT org) FROM registry")


@checks("# The MySQL mirror, on configs/demo-mirror.yaml.")
def mirror(ran: Ran) -> None:
    assert ran.mirror is not None
    db = ran.mirror
    assert ran.out == ["True [('registry', 1, 1), ('observations', 0, 0)]",
                       f"up {db.user}@{db.server.host}:{db.server.port}/{db.database}"]
    assert db.server.query("SELECT sw_scope, org, name FROM registry", database=db.database
                           ) == [("device-1", "Alder Grid", "lower weir site")]


# --- running them -------------------------------------------------------------------------


def demo_folder(tmp_path: Path) -> Path:
    """A working directory holding configs/demo.yaml, with the generator cut to a tenth."""
    text = (ROOT / "configs" / "demo.yaml").read_text()
    for line, smaller in SMALLER:
        assert text.count(line) == 1, f"configs/demo.yaml no longer has {line!r} once"
        text = text.replace(line, smaller)
    folder = tmp_path / "work"
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "demo.yaml").write_text(text)
    return folder


def add_mirror_config(folder: Path, block: Block, db: MirrorDb) -> None:
    """configs/demo-mirror.yaml as the README says to make it, with the test server's DSN."""
    sections = [b for b in BLOCKS if b.lang == "yaml" and b.line < block.line
                and b.text.startswith("mirror:\n")]
    assert sections, f"README.md:{block.line}: no ```yaml mirror: section before the example"
    section = sections[-1]
    lines = section.text.splitlines(keepends=True)
    dsn = [i for i, line in enumerate(lines) if line.strip().startswith("dsn:")]
    assert len(dsn) == 1, "the README's mirror: section has no single dsn line"
    lines[dsn[0]] = f"  dsn: {db.dsn}\n"
    demo = (folder / "configs" / "demo.yaml").read_text()
    (folder / MIRROR_CONFIG).write_text(f"{demo}\n{''.join(lines)}")


@pytest.mark.parametrize("block", PYTHON, ids=[f"README.md:{b.line} {b.first}" for b in PYTHON])
def test_the_example_runs_on_the_demo_config_and_does_what_it_says(
        block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    check = CHECKS.get(block.first)
    if check is None:
        pytest.fail(f"README.md:{block.line}: no check for the example that starts with "
                    f"{block.first!r}; add one to CHECKS in {Path(__file__).name}")
    folder = demo_folder(tmp_path)
    db: MirrorDb | None = None
    if MIRROR_CONFIG in block.text:
        db = request.getfixturevalue("mirror_db")
        add_mirror_config(folder, block, db)
    monkeypatch.delenv("SQLWARDEN_DATA", raising=False)
    monkeypatch.chdir(folder)
    # Compiled with README.md's line numbers, so a traceback points into the README.
    code = compile("\n" * (block.line - 1) + block.text, str(README), "exec")
    exec(code, {"__name__": "__main__"})
    ran = Ran(out=capsys.readouterr().out.splitlines(), folder=folder, mirror=db)
    if "configs/demo" in block.text:  # it starts an engine on the demo's config
        assert ran.database.exists(), "the example wrote its database somewhere else"
    check(ran)


def test_every_python_example_has_a_check_and_a_first_line_of_its_own() -> None:
    firsts = [block.first for block in PYTHON]
    assert len(set(firsts)) == len(firsts), firsts
    assert sorted(firsts) == sorted(CHECKS)


# --- the command list ---------------------------------------------------------------------

#: A command word in a README entry: `task`, `check-config`, `pause|resume|cancel`.
_WORDS = re.compile(r"[a-z][a-z-]*(?:\|[a-z][a-z-]*)*")
_OPTION = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")


def command_section() -> str:
    text = README.read_text()
    return text[text.index("## The command line\n"):text.index("\n## Configuration\n")]


def command_list() -> dict[tuple[str, ...], set[str]]:
    """The README's command list: each command's words and the options its entry shows."""
    heading = README.read_text().splitlines().index("## The command line") + 1
    block = next(b for b in BLOCKS if b.line > heading and b.lang == "")
    entries: list[str] = []
    for line in block.text.splitlines():
        if line.startswith("sqlwarden "):
            entries.append(line)
        else:  # an entry's second line
            entries[-1] += " " + line
    commands: dict[tuple[str, ...], set[str]] = {}
    for entry in entries:
        words = entry.split()[1:]
        path: list[str] = []
        while words and _WORDS.fullmatch(words[0]):
            path.append(words.pop(0))
        # `-vv` is `-v` given twice.
        options = {re.sub(r"^-(\w)\1+$", r"-\1", o) for o in _OPTION.findall(entry)}
        for command in expand(path):
            commands[command] = options
    return commands


def expand(path: list[str]) -> list[tuple[str, ...]]:
    """`task pause|resume|cancel` as three commands."""
    commands: list[tuple[str, ...]] = [()]
    for word in path:
        commands = [(*c, alt) for c in commands for alt in word.split("|")]
    return commands


@dataclass(frozen=True)
class Help:
    """What `sqlwarden ... --help` shows: its sub-commands and its options (each with its
    other spellings)."""

    commands: tuple[str, ...]
    options: tuple[frozenset[str], ...]


def cli_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> Help:
    from sqlwarden.cli import main

    assert main([*path, "--help"]) == 0, f"sqlwarden {' '.join(path)} --help failed"
    text = capsys.readouterr().out
    commands: list[str] = []
    options: list[frozenset[str]] = []
    for line in text.splitlines():
        if (found := re.match(r"    ([a-z][a-z-]*)(?:\s|$)", line)) is not None:
            commands.append(found.group(1))
        elif line.startswith("  -"):
            spelled = line.strip().split("  ")[0]
            options.append(frozenset(_OPTION.findall(spelled)) - {"-h", "--help"})
    return Help(tuple(commands), tuple(o for o in options if o))


def test_every_command_in_the_readme_list_exists_with_the_options_it_shows(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per option in the help
    listed = command_list()
    assert ("run",) in listed and ("replay",) in listed
    for command, options in listed.items():
        taken = set().union(*cli_help(command, capsys).options)
        assert options <= taken, (f"README lists sqlwarden {' '.join(command)} with "
                                  f"{sorted(options - taken)}, which it does not take")


def test_every_command_and_option_of_sqlwarden_is_in_the_readme(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    section, listed = command_section(), command_list()
    missing: list[str] = []
    todo: list[tuple[str, ...]] = [()]
    while todo:
        command = todo.pop()
        shown = cli_help(command, capsys)
        todo += [(*command, sub) for sub in shown.commands]
        if command and not shown.commands and command not in listed:
            missing.append(f"sqlwarden {' '.join(command)}")
        for spellings in shown.options:
            if not any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", section)
                       for o in spellings):
                missing.append(f"sqlwarden {' '.join(command)} {'/'.join(sorted(spellings))}")
    assert not missing, f"not in README's 'The command line': {missing}"


def test_the_readme_names_no_module_of_the_old_top_level_packages() -> None:
    text = README.read_text()
    # The Layout section describes the folders, which keep their names.
    text = text[:text.index("\n## Layout\n")] + text[text.index("\n## Tests\n"):]
    old = re.findall(r"(?:from|import)\s+(?:engine|actors)\b|python -m (?:engine|actors)\b"
                     r"|\b(?:engine|actors)\.(?:errors|cli|facade|config|protocol|views)\b",
                     text)
    assert old == []

