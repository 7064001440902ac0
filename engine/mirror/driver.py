"""The MySQL connector, imported on first use, with its C extension where it can load.

The connector's wheel builds its C extension against the OpenSSL it ships
in `mysql/vendor/`. Where the system OpenSSL is older (Debian 12's 3.0),
the extension fails to import and the connector quietly runs in pure
Python, about 1.6x slower. Loading the shipped libraries globally first
makes the dynamic loader use them for the extension. That has to happen
before Python's own `ssl` or `hashlib` loads the system libraries under the
same names, and it changes the whole process, so it is never an import side
effect: `load_driver` does it right before the connector's first import,
which `Engine.start` makes first thing when the config has a mirror. The
engine's own modules load neither `ssl` nor `hashlib` before that (a test
holds them to it). A service that imported either itself gets the connector
in pure Python, and the mirror's status says so.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from typing import Any

_lock = threading.Lock()
_driver: Any = None


def preload() -> bool:
    """Load the connector's bundled OpenSSL globally; False when it could not be."""
    if "mysql.connector" not in sys.modules and any(
            name in sys.modules for name in ("_ssl", "_hashlib")):
        return False  # too late: the system libraries are loaded under those names
    try:
        spec = importlib.util.find_spec("mysql")
    except (ImportError, ValueError):
        return False
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        vendor = os.path.join(root, "vendor")
        paths = [os.path.join(vendor, lib) for lib in ("libcrypto.so.3", "libssl.so.3")]
        if not all(os.path.exists(p) for p in paths):
            continue
        try:
            for path in paths:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            return False
        return True
    return False


def load_driver() -> Any:
    """Import `mysql.connector` (once), preloading its OpenSSL first where it can."""
    global _driver
    with _lock:
        if _driver is None:
            preload()
            import mysql.connector

            _driver = mysql.connector
        return _driver


def driver_name() -> str:
    """`C extension` or `pure Python`: the connector path the mirror uses."""
    return "C extension" if load_driver().HAVE_CEXT else "pure Python"
