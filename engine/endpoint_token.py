"""The status endpoint's control token: made at start, kept beside the database, owner only.

Any local program can reach a loopback port, so the endpoint's control routes
(every POST) want a token that only the engine's user can read. The engine
makes a fresh one each start (32 bytes of `os.urandom`) and writes it to
`<database>.token`, beside the file a symlinked database path names (as the
engine lock does, so every name of one database finds one token), mode 0600.
It is written only once the engine lock is held, so a refused start makes no
token file, and removed on stop (only if it is still the file this engine
wrote); one a killed engine left is harmless, since the next start replaces it.

The path is never followed or written through: a symlink, a folder or a file
of another user there refuses the start with one line. A regular file of ours
(a token left by a killed run) is unlinked and the new token created with
`O_CREAT | O_EXCL | O_NOFOLLOW`: a reader that opened the old file cannot see
the new token, and a link someone slips in meanwhile fails the create instead
of being written through. The mode is set with `fchmod` too, so the umask
cannot widen it.

The token itself never goes into a log, the message log, status, metrics or
an error message; only the file's path does.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlwarden.errors import EngineError

TOKEN_SUFFIX = ".token"
#: A token is 43 characters; a file bigger than this is not one of ours.
MAX_TOKEN_FILE_BYTES = 1024


class TokenError(EngineError):
    """The token file cannot be written or read, or the engine refused the token."""

    user_error = True


def token_path(database: Path | str) -> Path:
    """Where the engine on `database` keeps its token: beside the file a symlink names."""
    return Path(f"{os.path.realpath(database)}{TOKEN_SUFFIX}")


def new_token() -> str:
    """32 random bytes as URL-safe text (43 characters).

    `os.urandom` is what `secrets` uses; `secrets` itself is not imported
    because it loads Python's OpenSSL (`hmac`), which must come after the
    mirror's driver (see `mirror.driver`).
    """
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def same_token(given: bytes, token: bytes) -> bool:
    """Whether `given` is `token`, in time that does not depend on where they differ.

    `hmac.compare_digest` does this, but `hmac` loads OpenSSL (see `new_token`).
    """
    if len(given) != len(token):
        return False  # the length is no secret: every token is 43 characters
    difference = 0
    for a, b in zip(given, token, strict=True):
        difference |= a ^ b
    return difference == 0


@dataclass(frozen=True, slots=True)
class TokenFile:
    """A token file this engine wrote: its path and the file's identity, to remove only it."""

    path: Path
    device: int
    inode: int

    @classmethod
    def write(cls, path: Path, token: str) -> TokenFile:
        """Write `token` to `path` (mode 0600), replacing only a stale token file of ours.

        Raises `TokenError` (one line, the path but never the token) when the
        path is a symlink, not a regular file, another user's, or cannot be written.
        """
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            found = None
        except OSError as exc:
            raise TokenError(f"cannot write the status token file {path}: "
                             f"{exc.strerror or exc}") from None
        if found is not None:
            if stat.S_ISLNK(found.st_mode):
                raise TokenError(f"the status token file {path} is a symlink; the engine never "
                                 "writes through one (remove it)")
            if not stat.S_ISREG(found.st_mode):
                raise TokenError(f"the status token file {path} is not a regular file "
                                 "(remove it)")
            if found.st_uid != os.geteuid():
                raise TokenError(f"the status token file {path} belongs to another user "
                                 f"(uid {found.st_uid}); remove it")
            try:
                # A token a killed run left: a new file, so a reader holding the old one
                # open never sees the new token.
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise TokenError(f"cannot replace the status token file {path}: "
                                 f"{exc.strerror or exc}") from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            why = ("something was put there meanwhile" if exc.errno == errno.EEXIST
                   else exc.strerror or str(exc))
            raise TokenError(f"cannot write the status token file {path}: {why}") from None
        try:
            os.fchmod(fd, 0o600)  # the umask may have narrowed it; nothing may widen it
            data = f"{token}\n".encode()
            while data:
                data = data[os.write(fd, data):]
            info = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise TokenError(f"cannot write the status token file {path}: "
                             f"{exc.strerror or exc}") from None
        os.close(fd)
        return cls(path, info.st_dev, info.st_ino)

    def remove(self) -> None:
        """Remove the file if the path still names the one written (best effort)."""
        with contextlib.suppress(OSError):
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == (self.device, self.inode):
                os.unlink(self.path)


def read_token(path: Path) -> str:
    """The token in `path`; `TokenError` with one line when it cannot be read.

    A symlink is not followed (the engine never makes one), and at most a small
    file's worth is read, whatever is there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TokenError(f"the status token file {path} is missing; is the engine running "
                         "on this database a sqlwarden that writes one?") from None
    except PermissionError:
        raise TokenError(f"cannot read the status token file {path}: permission denied "
                         "(control needs the user the engine runs as)") from None
    except OSError as exc:
        why = ("it is a symlink" if exc.errno == errno.ELOOP
               else exc.strerror or str(exc))
        raise TokenError(f"cannot read the status token file {path}: {why}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenError(f"the status token file {path} is not a regular file")
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenError(f"cannot read the status token file {path}: "
                         f"{exc.strerror or exc}") from None
    finally:
        os.close(fd)
    token = data.decode("ascii", errors="replace").strip()
    if not token or len(data) > MAX_TOKEN_FILE_BYTES or not token.isascii() \
            or any(c.isspace() or not c.isprintable() for c in token):
        raise TokenError(f"the status token file {path} does not hold a token")
    return token
