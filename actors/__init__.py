"""The engine's actors: thin owners of a connection or of state.

Each handler is a few lines that call into `engine`; only the facade and the
CLI import this package.
"""
