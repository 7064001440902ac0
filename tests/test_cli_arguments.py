"""Hostile command-line arguments: one line naming the option, exit 2, nothing created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_sqlwarden

DEMO = str(ROOT / "configs" / "demo.yaml")

OUT_OF_RANGE = [
    (("sync", "history", DEMO, "--limit", "99999999999999999999999"), "--limit", "out of range"),
    (("sync", "history", DEMO, "--limit", "0"), "--limit", "out of range"),
    (("sync", "history", DEMO, "--limit", "-5"), "--limit", "out of range"),
    (("sync", "history", DEMO, "--limit", "1e3"), "--limit", "not a whole number"),
    (("replay", "x.jsonl", "--corr", "-1"), "--corr", "out of range"),
    (("replay", "x.jsonl", "--corr", str(2**64)), "--corr", "out of range"),
    (("mirror", "reconcile", DEMO, "--timeout", "nan"), "--timeout", "out of range"),
    (("mirror", "reconcile", DEMO, "--timeout", "inf"), "--timeout", "out of range"),
    (("mirror", "reconcile", DEMO, "--timeout", "1e999"), "--timeout", "out of range"),
    (("mirror", "reconcile", DEMO, "--timeout", "0"), "--timeout", "out of range"),
    (("mirror", "reconcile", DEMO, "--timeout", "soon"), "--timeout", "not a number"),
]


@pytest.mark.parametrize(("args", "option", "why"), OUT_OF_RANGE,
                         ids=[" ".join(a[-2:]) for a, _, _ in OUT_OF_RANGE])
def test_a_numeric_option_out_of_range_is_one_line_and_exit_2(
        args: tuple[str, ...], option: str, why: str) -> None:
    before = names_under(ROOT)
    done = run_sqlwarden(*args, timeout_s=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert option in lines[0] and why in lines[0]
    assert "Traceback" not in done.stderr
    assert names_under(ROOT) == before


def names_under(root: Path) -> set[str]:
    """Every file name in the checkout outside .git and the venv (to see nothing was made)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in (".git", ".venv", "build")
            and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_replay_follow_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "device":
        target = Path("/dev/zero")
    elif kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
    else:
        target = tmp_path
    done = run_sqlwarden("replay", str(target), "--follow", timeout_s=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "regular file" in lines[0], done.stderr
