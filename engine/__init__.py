"""sqlwarden: keeps a device's SQLite database healthy while data pours in.

Import the facade from `engine.facade`; this package stays free of eager
imports so that `actors` can import `engine.protocol` without a cycle.
"""

__version__ = "0.1.0"
