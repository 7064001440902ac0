"""sqlwarden: keeps a device's SQLite database healthy while data pours in.

Import the facade from `engine.facade`; this package stays free of eager
imports so that `actors` can import `engine.protocol` without a cycle.
"""

from engine.driverlibs import preload as _preload_mysql_libs

__version__ = "0.1.0"

# Before anything imports `ssl`: lets the MySQL connector's C extension load.
_preload_mysql_libs()
