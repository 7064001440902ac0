"""Chunked background tasks: the SQL of a chunk and its size (`chunks`), and the
runner that decides when each chunk goes (`runner`)."""
