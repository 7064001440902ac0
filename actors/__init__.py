"""`sqlwarden.actors`: the engine's actors, thin owners of a connection or of state.

An actor routes each message to its state machine in the core (`tasks.runner`,
`fts.controller`, `sync.schedule`, `mirror.state`, `progress`) or to the
plain code that does its I/O (`db.writer`, `mirror.session`), and performs
the effects it gets back (`base`); `bus` carries every message and logs it.
Only the facade and the CLI import this package.
"""
