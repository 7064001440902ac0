"""File paths in the config: taken from the config file's folder, and checked usable.

A path is checked without creating anything, so `check-config` leaves no file
behind; the check is skipped when a caller asks (`check_paths=False`). A
symbolic link that leads nowhere (a missing target, a loop) is refused.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from sqlwarden.config.at import At


def resolve(base: Path, at: At) -> Path:
    """The path `at` holds (`~` expanded), taken from `base` when relative, and normalised."""
    raw = at.string()
    if "\0" in raw:
        # No file name holds one; every OS call on the path would fail on it later.
        raise at.error("a path may not hold a NUL character")
    path = Path(os.path.expanduser(raw))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def link_problem(path: Path) -> str | None:
    """Why `path` cannot be used as it stands, when a symbolic link on it leads nowhere.

    The engine never replaces or removes a link it did not make, nor makes
    folders through one: a loop of links anywhere on the path, a link to a
    missing folder on the way, or a file link whose target's folder is
    missing is refused. A link to an existing file or folder is used as it is,
    and so is a link naming a file still to be made in an existing folder (the
    engine makes the file there, where the link points).
    """
    for place in (path, *path.parents):
        if not os.path.islink(place) or os.path.exists(place):
            continue
        try:
            os.stat(place)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{place} is a loop of symbolic links"
        target = Path(os.path.realpath(place))
        if place == path and target.parent.is_dir():
            continue
        return (f"{place} is a symbolic link to {os.readlink(place)}, which does not exist; "
                "the engine does not make folders through a link (create the target, or name "
                "a real path)")
    return None


def check_writable(at: At, path: Path, *, link_ok: bool = True) -> None:
    """The file must be creatable or writable, without creating it.

    With `link_ok` false the file itself may not be a symbolic link (one the
    engine renames or rewrites, such as the message log).
    """
    problem = link_problem(path)
    if problem is not None:
        raise at.error(problem)
    if not link_ok and path.is_symlink():
        raise at.error(f"{path} is a symbolic link; the engine writes and rotates this file "
                       "itself (name the file the link points to, or a folder that is a link)")
    if path.exists():
        if not path.is_file():
            raise at.error(f"{path} exists and is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise at.error(f"{path} is not readable and writable")
        return
    # A link to a file still to be made: the file is made where the link points.
    ancestor = Path(os.path.realpath(path)).parent if path.is_symlink() else path.parent
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
