"""Keep secrets out of everything the engine writes: logs, status, errors, rejects."""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Iterable

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|token|api_?key|credential", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def is_secret_key(key: str) -> bool:
    """True for keys whose values are secrets (`password`, `api_key`, `token` ...)."""
    return _SECRET_KEY.search(key) is not None


def _forms(secrets: Iterable[str]) -> set[str]:
    """Each secret as given and as it reads inside a JSON string (a `"` or `\\` in it is
    escaped there, as in a rejected record's text)."""
    forms = set()
    for secret in secrets:
        if secret:
            forms.add(secret)
            forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    return forms


class Redactor:
    """Replaces known secret values, secret-looking keys and URL passwords."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted(_forms(secrets), key=len, reverse=True)

    def add(self, secret: str) -> None:
        """One more secret, known only once the engine runs (the endpoint's token)."""
        if secret:
            # One assignment: a thread redacting meanwhile sees the old list or the new.
            self._secrets = sorted({*self._secrets, *_forms([secret])}, key=len,
                                   reverse=True)

    def cut_text(self, text: str) -> str:
        """`text`, which was cut short, with every secret replaced, also the start of one
        the cut ended (a secret's first 4 characters or more at the very end)."""
        text = self.text(text)
        for secret in self._secrets:
            for size in range(len(secret) - 1, 3, -1):
                if text.endswith(secret[:size]):
                    return text[:-size] + REDACTED
        return text

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


class SecretFilter(logging.Filter):
    """Takes the secrets of every engine alive in the process out of log records.

    The second line of defence: the engine's own messages are written not to
    hold secrets, but an exception's text (a driver's, the OS's) or a value it
    quotes may. The message (with its arguments merged), the traceback text and
    the stack are redacted in place, so every handler sees them clean.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        # Weak: an engine that is gone takes its secrets out of the filter with it.
        self._redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def add(self, redactor: Redactor) -> None:
        with self._lock:
            self._redactors.add(redactor)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            redactors = [r for r in self._redactors if r._secrets]
        if not redactors:
            return True

        def clean(text: str) -> str:
            for redactor in redactors:
                text = redactor.text(text)
            return text

        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it, as it would anyway
            return True
        cleaned = clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = clean(record.exc_text)
        if record.stack_info:
            record.stack_info = clean(record.stack_info)
        return True


#: The one filter every `sqlwarden` logger carries (see `guard_logs`).
LOG_FILTER = SecretFilter()


def guard_logs(redactor: Redactor) -> None:
    """Redact `redactor`'s secrets from every record of the `sqlwarden` loggers.

    A logger's filters see only the records logged on it, not its children's,
    so the filter goes on each `sqlwarden.*` logger that exists (every module
    makes its logger when imported; the engine calls this once they are).
    """
    LOG_FILTER.add(redactor)
    names = [name for name in list(logging.Logger.manager.loggerDict)
             if name == "sqlwarden" or name.startswith("sqlwarden.")]
    for name in ["sqlwarden", *names]:
        logger = logging.getLogger(name)
        if LOG_FILTER not in logger.filters:
            logger.addFilter(LOG_FILTER)
    # The handlers already set up (the CLI's stderr one) see every record that reaches
    # them, a logger made later or another library's (pykka, the MySQL driver) too.
    for handler in [*logging.getLogger().handlers, *logging.getLogger("sqlwarden").handlers]:
        if LOG_FILTER not in handler.filters:
            handler.addFilter(LOG_FILTER)
