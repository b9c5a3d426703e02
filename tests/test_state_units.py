"""duralog.state without a server: events, schema builders, MaterializedState."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from duralog.state import (
    MISSING,
    ChangeEvent,
    Collection,
    ControlEvent,
    EventError,
    MaterializedState,
    StateSchema,
    StateSchemaError,
    parse_event,
    parse_events,
)
from duralog.state import events as ev
from tests import state_gen


def change(op: str, t: str = "user", k: str = "1", **more: Any) -> dict[str, Any]:
    return {"type": t, "key": k, "headers": {"operation": op}, **more}


# -- events -------------------------------------------------------------------------------

def test_parse_round_trips_the_wire_form() -> None:
    msgs = [
        {"type": "user", "key": "u:1", "value": {"n": 1}, "old_value": None,
         "headers": {"operation": "update", "txid": "t1", "timestamp": "2025-01-15T10:35:00Z"}},
        {"type": "user", "key": "u:1", "headers": {"operation": "delete"}},
        {"type": "user", "key": "u:1", "value": None, "headers": {"operation": "delete"}},
        {"type": "cfg", "key": "theme", "value": "dark",
         "headers": {"operation": "upsert", "from": "x", "offset": "0_1"}},
        {"headers": {"control": "snapshot-start", "offset": "123456_000"}},
        {"headers": {"control": "reset"}},
    ]
    for msg in msgs:
        assert parse_event(msg).to_json() == msg
    delete = parse_event(msgs[1])
    assert isinstance(delete, ChangeEvent) and delete.value is MISSING
    assert parse_event(msgs[2]).value is None          # null is not absent


@pytest.mark.parametrize(("msg", "reason"), [
    ([1], "must be a JSON object"),
    ({"type": "u", "key": "1"}, "headers must be a JSON object"),
    ({"headers": {}}, "operation (a change) or a control"),
    (change("insert"), "must carry a value"),
    (change("update"), "must carry a value"),
    (change("upsert"), "must carry a value"),
    (change("merge", value=1), "insert, update, delete or upsert"),
    ({**change("insert", value=1), "type": ""}, "type must be a non-empty string"),
    ({**change("insert", value=1), "key": 7}, "key must be a non-empty string"),
    ({"type": "u", "key": "1", "value": 1,
      "headers": {"operation": "insert", "txid": ""}}, "txid"),
    ({"type": "u", "key": "1", "value": 1,
      "headers": {"operation": "insert", "timestamp": "yesterday"}}, "RFC 3339"),
    ({"headers": {"control": "rewind"}}, "snapshot-start, snapshot-end, reset"),
    ({"headers": {"control": "reset", "offset": ""}}, "offset"),
])
def test_malformed_events_are_refused_naming_the_offset(msg: Any, reason: str) -> None:
    good = change("insert", value=1)
    with pytest.raises(EventError) as info:
        parse_events([good, msg], offset="0000_0042")
    assert reason in str(info.value)
    assert info.value.where == "message 1 of the chunk read at offset 0000_0042"
    state = MaterializedState()
    with pytest.raises(EventError, match="message 1 of the chunk read at offset 0000_0042"):
        state.apply_json([good, msg], offset="0000_0042")
    raw = MaterializedState()
    with pytest.raises(EventError) as info:
        raw.apply_bytes(orjson.dumps([good, msg]), offset="0000_0042")
    assert reason in str(info.value)
    assert info.value.where == "message 1 of the chunk read at offset 0000_0042"
    assert raw.get("user", "1") == 1      # the message before the bad one stays applied


def test_builders() -> None:
    assert ev.insert("t", "k", {"a": 1}, txid="x").to_json() == {
        "type": "t", "key": "k", "value": {"a": 1}, "headers": {"operation": "insert",
                                                                 "txid": "x"}}
    assert ev.delete("t", "k").to_json() == {"type": "t", "key": "k",
                                             "headers": {"operation": "delete"}}
    assert ev.reset("0_0").to_json() == {"headers": {"control": "reset", "offset": "0_0"}}
    with pytest.raises(EventError):
        ChangeEvent("t", "", "insert", 1)


# -- schema -------------------------------------------------------------------------------

class User(BaseModel):
    id: str
    name: str
    age: int = 0


class Item(BaseModel):
    sku: int
    label: str = ""


def test_schema_builders_take_the_key_from_the_model() -> None:
    schema = StateSchema({"users": Collection(type="user", model=User, primary_key="id"),
                          "items": Collection(type="item", model=Item, primary_key="sku")})
    e = schema.users.insert({"id": "u1", "name": "Ada", "age": "3"})
    assert e.to_json() == {"type": "user", "key": "u1",
                           "value": {"id": "u1", "name": "Ada", "age": 3},
                           "headers": {"operation": "insert"}}
    assert schema["items"].upsert(Item(sku=7)).key == "7"
    assert schema.items.insert(Item(sku=7), key="custom").key == "custom"
    u = schema.users.update(User(id="u1", name="B"), old_value=User(id="u1", name="A"),
                            txid="t")
    assert u.old_value == {"id": "u1", "name": "A", "age": 0} and u.txid == "t"
    d = schema.users.delete(old_value=User(id="u9", name="Z"))
    assert d.key == "u9" and d.value is MISSING and d.operation == "delete"
    assert schema.users.delete("u2").to_json() == {"type": "user", "key": "u2",
                                                   "headers": {"operation": "delete"}}
    with pytest.raises(StateSchemaError, match="Validation failed for user insert"):
        schema.users.insert({"id": "u1"})
    with pytest.raises(StateSchemaError, match="non-empty 'id'"):
        schema.users.insert({"id": "", "name": "x"})
    with pytest.raises(StateSchemaError, match="must provide either 'key' or 'old_value'"):
        schema.users.delete()
    with pytest.raises(StateSchemaError, match="update \\(oldValue\\)"):
        schema.users.update(User(id="1", name="x"), old_value={"id": 1})


@pytest.mark.parametrize("name", ["collections", "preload", "close", "utils", "actions"])
def test_reserved_collection_names_are_refused_as_in_typescript(name: str) -> None:
    with pytest.raises(StateSchemaError) as info:
        StateSchema({name: Collection(type="user", model=User, primary_key="id")})
    # The TS message, word for word (src/schema.ts).
    assert str(info.value) == (f'Reserved collection name "{name}" - this would collide with '
                               'StreamDB properties (collections, preload, close, utils, actions)')


def test_duplicate_event_types_and_bad_definitions_are_refused() -> None:
    with pytest.raises(StateSchemaError, match='Duplicate event type "user" - used by both '
                                               '"a" and "b" collections'):
        StateSchema({"a": Collection(type="user", model=User, primary_key="id"),
                     "b": Collection(type="user", model=User, primary_key="id")})
    with pytest.raises(StateSchemaError, match="has no field 'uid'"):
        Collection(type="user", model=User, primary_key="uid")


# -- MaterializedState (section 6 and the TS class) ---------------------------------------

def test_materialization_example_of_section_6() -> None:
    state = MaterializedState()
    state.apply_json([
        {"type": "user", "key": "1", "value": {"name": "Alice"},
         "headers": {"operation": "insert"}},
        {"type": "user", "key": "2", "value": {"name": "Bob"}, "headers": {"operation": "insert"}},
        {"type": "user", "key": "1", "value": {"name": "Alice Smith"},
         "headers": {"operation": "update"}},
    ])
    assert state.to_json() == {"user": {"1": {"name": "Alice Smith"}, "2": {"name": "Bob"}}}


def test_ts_semantics_order_delete_creates_type_reset_clears() -> None:
    state = MaterializedState()
    state.apply(ev.insert("a", "1", 1))
    state.apply(ev.insert("a", "2", 2))
    state.apply(ev.update("a", "1", 10))            # keeps its place
    assert list(state.view("a")) == ["1", "2"]
    state.apply(ev.delete("a", "1"))
    state.apply(ev.upsert("a", "1", 11))            # moves to the end
    assert list(state.view("a").items()) == [("2", 2), ("1", 11)]
    state.apply(ev.delete("ghost", "x"))            # creates the type, as TS does
    assert state.types == ["a", "ghost"] and state.type_count == 2
    assert state.get("ghost", "x") is None and state.view("nope") == {}
    state.apply(ev.snapshot_start())
    assert len(state) == 2
    state.apply(ControlEvent("reset"))
    assert state.types == [] and len(state) == 0


def test_apply_json_equals_typed_apply_on_random_sequences() -> None:
    rng = random.Random(7)
    for _ in range(300):
        events = state_gen.sequence(rng)
        fast, typed, raw = MaterializedState(), MaterializedState(), MaterializedState()
        assert fast.apply_json(events) == len(events)
        assert raw.apply_bytes(orjson.dumps(events)) == len(events)
        typed.apply_batch(parse_event(e) for e in events)
        assert fast.to_json() == typed.to_json() == raw.to_json()
        assert fast.types == typed.types == raw.types


def test_apply_bytes_keeps_big_numbers_and_decodes_once() -> None:
    state = MaterializedState()
    state.apply_bytes(b'[{"type":"n","key":"big","value":123456789012345678901234567890,'
                      b'"headers":{"operation":"insert"}},'
                      b'{"type":"n","key":"o","value":{"a":[1,2]},"headers":{"operation":"upsert"}}]')
    assert state.get("n", "big") == 123456789012345678901234567890
    assert state.get("n", "o") is state.get("n", "o") == {"a": [1, 2]}
    assert dict(state.view("n")) == {"big": 123456789012345678901234567890, "o": {"a": [1, 2]}}


def test_snapshot_events_rebuild_the_state() -> None:
    rng = random.Random(11)
    state = MaterializedState()
    state.apply_json(state_gen.sequence(rng, 200))
    rebuilt = MaterializedState()
    snap = state.snapshot_events(offset="9_9")
    assert snap[0].to_json()["headers"]["control"] == "snapshot-start"
    assert snap[-1].to_json()["headers"]["control"] == "snapshot-end"
    rebuilt.apply_batch(snap)
    nonempty = {t: rows for t, rows in state.to_json().items() if rows}
    assert rebuilt.to_json() == nonempty


# -- StateCore: a transaction split across chunks is applied at the up-to-date boundary ----

def test_state_core_applies_only_at_up_to_date_boundaries() -> None:
    from duralog.state.tables import StateCore

    schema = StateSchema({"users": Collection(type="user", model=User, primary_key="id")})
    core = StateCore(schema)
    tx = [schema.users.insert(User(id=str(i), name="n"), txid="t").to_json() for i in range(4)]
    # A server may end a chunk inside an append: the first half is not up to date.
    assert core.receive(orjson.dumps(tx[:2]), "0_2", False) is None
    assert len(core.tables["users"]) == 0 and core.offset == "-1"
    assert "t" not in core.seen_txids
    batch = core.receive(orjson.dumps(tx[2:]), "0_4", True)
    assert batch is not None and batch.events == 4 and batch.txids == {"t"}
    assert (batch.start, batch.end) == ("-1", "0_4") and core.offset == "0_4"
    assert [c.operation for c in batch.changes] == ["insert"] * 4
    assert len(core.tables["users"]) == 4
    # A malformed message anywhere in the buffer: nothing of the batch is applied.
    assert core.receive(orjson.dumps([schema.users.delete("0").to_json()]), "0_5", False) is None
    with pytest.raises(EventError, match="message 0 of the chunk read from offset 0_5"):
        core.receive(b'[{"type":"user","headers":{"operation":"delete"}}]', "0_6", True)
    assert len(core.tables["users"]) == 4 and core.offset == "0_4"
