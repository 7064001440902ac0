"""The protocol: frozen messages with stable kinds, and failures that reach someone."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from sqlwarden import protocol
from sqlwarden.errors import UnexpectedMessage
from sqlwarden.facade import Engine
from sqlwarden.protocol import Execute, Message, message_kinds

from .conftest import count_rows


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Unknown(Message):
    kind = "test.unknown"


def test_every_message_kind_is_dotted_and_unique_and_the_writer_kinds_are_stable() -> None:
    kinds = message_kinds()
    assert all("." in kind for kind in kinds)
    assert {"writer.execute", "writer.batch", "writer.insert_rows", "writer.upsert_rows",
            "writer.checkpoint", "writer.status", "writer.idle_check"} <= set(kinds)
    with pytest.raises(TypeError, match="already used"):
        type("Again", (Message,), {"kind": "writer.execute", "__slots__": ()})


def test_messages_are_frozen_and_hold_no_lists_or_dicts() -> None:
    message = Execute(sql="SELECT 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.sql = "SELECT 2"  # type: ignore[misc]
    for kind, cls in message_kinds().items():
        if cls.__module__ != protocol.__name__:
            continue
        hints = typing.get_type_hints(cls, vars(protocol))
        for field in dataclasses.fields(cls):
            shown = str(hints[field.name])
            assert "list" not in shown and "dict" not in shown, (kind, field.name, shown)


def test_an_unknown_message_raises_to_an_asker(engine: Engine) -> None:
    with pytest.raises(UnexpectedMessage, match=r"writer does not handle 'test\.unknown'"):
        engine.ask("writer", Unknown())


def test_a_failing_tell_is_recorded_and_shown_in_status(engine: Engine) -> None:
    engine.tell("writer", Unknown())
    engine.tell("writer", Execute(sql="INSERT INTO nowhere VALUES (1)"))
    engine.write("INSERT INTO sites (id, org, name, updated_at) VALUES (1, 'a', 'b', 'c')")
    failures = engine.status()["failures"]
    assert failures["total"] == 2
    assert [(f["actor"], f["message_kind"], f["error_type"]) for f in failures["recent"]] == [
        ("writer", "test.unknown", "UnexpectedMessage"),
        ("writer", "writer.execute", "WriteError")]
    assert "no such table: nowhere" in failures["recent"][1]["error"]
    assert count_rows(engine.config.database.path, "sites") == 1


def test_a_message_that_bypasses_the_bus_is_reported_not_handled(engine: Engine) -> None:
    ref = {name: ref for name, ref, _ in engine._actors}["writer"]
    ref.tell("not an envelope")
    engine.write("INSERT INTO sites (id, org, name, updated_at) VALUES (1, 'a', 'b', 'c')")
    [failure] = engine.status()["failures"]["recent"]
    assert (failure["actor"], failure["error_type"]) == ("writer", "UnexpectedMessage")
