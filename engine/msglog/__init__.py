"""The message log: one JSON line per message, appended by its own thread (`log`)."""
