"""File paths in the config: taken from the config file's folder, and checked usable.

A path is checked without creating anything, so `check-config` leaves no file
behind; the check is skipped when a caller asks (`check_paths=False`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlwarden.config.at import At


def resolve(base: Path, raw: str) -> Path:
    """`raw` (`~` expanded) taken from `base` when relative, and normalised."""
    path = Path(os.path.expanduser(raw))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def check_writable(at: At, path: Path) -> None:
    """The file must be creatable or writable, without creating it."""
    if path.exists():
        if not path.is_file():
            raise at.error(f"{path} exists and is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise at.error(f"{path} is not readable and writable")
        return
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise at.error(f"cannot create {path}: {ancestor} is not a directory")
    # os.access says yes to root everywhere; creating a file is the real test.
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=".sqlwarden-probe-"):
            pass
    except OSError as exc:
        raise at.error(f"cannot create {path}: directory {ancestor} is not writable "
                       f"({exc.strerror or exc})") from None
