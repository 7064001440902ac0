"""Keep secrets out of everything the engine writes: logs, status, errors."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|token|api_?key|credential", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def is_secret_key(key: str) -> bool:
    """True for keys whose values are secrets (`password`, `api_key`, `token` ...)."""
    return _SECRET_KEY.search(key) is not None


class Redactor:
    """Replaces known secret values, secret-looking keys and URL passwords."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, text: str) -> str:
        """`text` with every secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "://" in text:
            text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
        return text

    def value(self, key: str, value: object) -> object:
        """A value stored under `key`, redacted when the key names a secret."""
        if is_secret_key(key) and value not in (None, ""):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        return value
