"""Readers of each source kind (ndjson files, HTTP, the demo generator) and the
mapping of their records onto declared columns."""
