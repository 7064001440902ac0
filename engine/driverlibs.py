"""Make the MySQL connector's C extension loadable; run before anything imports `ssl`.

The connector's wheel builds its C extension against the OpenSSL it ships
in `mysql/vendor/`. Where the system OpenSSL is older (Debian 12's 3.0),
the extension fails to import and the connector quietly runs in pure
Python, about 1.6x slower. Loading the shipped libraries globally first
makes the dynamic loader use them for the extension. It must happen before
Python's own `ssl` or `hashlib` loads the system ones under the same names,
which is why `engine/__init__.py` calls this. Cheap (two `dlopen`s) and harmless
when the connector or its libraries are absent.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys


def preload() -> bool:
    """Load the connector's bundled OpenSSL globally; False when it could not be."""
    if "mysql.connector" not in sys.modules and any(
            name in sys.modules for name in ("_ssl", "_hashlib")):
        # Too late: `ssl` or `hashlib` loaded the system libraries under those names
        # (pytest does, for one); the connector then runs in pure Python, and the
        # mirror's status says so.
        return False
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
