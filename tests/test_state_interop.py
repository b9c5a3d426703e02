"""Interop of duralog.state with npm @durable-streams/state 0.3.1 (real Node).

- Random event sequences materialize to identical state (types, keys, values,
  and their order) in the TS MaterializedState and ours.
- Events written by Python through our server are materialized by the TS side,
  and events the TS schema helpers write are materialized by Python.
- Every event Python writes validates against state-protocol.schema.json.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import uuid
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from duralog.client import DurableStream
from duralog.state import (
    Collection,
    MaterializedState,
    StateSchema,
    StateWriter,
    parse_event,
    write_snapshot,
)
from tests import state_gen
from tests.servers import ROOT

PEER = ROOT / "tests/peers/state-peer.mjs"
SCHEMA_PATH = ROOT / "node_modules/@durable-streams/state/state-protocol.schema.json"
SEQUENCES = int(os.environ.get("DURALOG_STATE_SEQUENCES", "1000"))


def node(*args: str, stdin: Any = None, timeout: float = 120) -> Any:
    proc = subprocess.run(["node", str(PEER), *args], cwd=ROOT, capture_output=True,
                          input=None if stdin is None else json.dumps(stdin).encode(),
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def dump(state: MaterializedState) -> dict[str, Any]:
    return {"types": state.types, "typeCount": state.type_count,
            "data": [[t, [[k, v] for k, v in state.view(t).items()]] for t in state.types]}


@pytest.fixture(scope="module")
def validator(node_available: None) -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_random_sequences_match_typescript(node_available: None) -> None:
    rng = random.Random(15)
    sequences = [state_gen.sequence(rng) for _ in range(SEQUENCES)]
    theirs = node("materialize", stdin={"sequences": sequences})
    assert len(theirs) == len(sequences)
    kinds: set[str] = set()
    for i, (events, expected) in enumerate(zip(sequences, theirs, strict=True)):
        typed = MaterializedState()
        for event in events:
            typed.apply(parse_event(event))
        fast = MaterializedState()
        fast.apply_json(events, offset=f"seq{i}")
        raw = MaterializedState()
        raw.apply_bytes(json.dumps(events).encode(), offset=f"seq{i}")
        assert dump(typed) == expected, f"sequence {i}: {events}"
        assert dump(fast) == expected, f"sequence {i} (apply_json): {events}"
        assert dump(raw) == expected, f"sequence {i} (apply_bytes): {events}"
        for e in events:
            h = e["headers"]
            kinds.add(h.get("operation") or h["control"])
    # The sequences did exercise every operation and control.
    assert kinds == {"insert", "update", "delete", "upsert", "reset", "snapshot-start",
                     "snapshot-end"}


class User(BaseModel):
    id: str
    name: str
    age: int = 0


class Note(BaseModel):
    id: str
    text: str


SCHEMA = StateSchema({
    "users": Collection(type="user", model=User, primary_key="id"),
    "notes": Collection(type="note", model=Note, primary_key="id"),
})


def python_events() -> list[Any]:
    """What the Python builders make: every operation, txids, timestamps, old values."""
    return [
        SCHEMA.users.insert(User(id="u1", name="Ada"), txid="py-1"),
        SCHEMA.users.insert({"id": "u2", "name": "Grace", "age": "37"}, txid="py-1"),
        SCHEMA.notes.insert(Note(id="n1", text="hello"), timestamp="2025-01-15T10:30:00Z"),
        SCHEMA.users.update(User(id="u1", name="Ada L."), old_value=User(id="u1", name="Ada")),
        SCHEMA.notes.upsert(Note(id="n1", text="hello again")),
        SCHEMA.notes.upsert(Note(id="n9", text="new by upsert")),
        SCHEMA.users.delete("u2", old_value=User(id="u2", name="Grace", age=37)),
        SCHEMA.users.delete(old_value={"id": "u3", "name": "Nobody"}),
    ]


def test_python_to_typescript_through_our_server(memory_server: Any, validator: Any) -> None:
    url = f"{memory_server.url}/v1/stream/state-py-{uuid.uuid4().hex}"
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    with StateWriter(stream, producer_id="py-writer") as writer:
        with writer.transaction() as tx:
            for event in python_events()[:2]:
                tx.append(event)
        for event in python_events()[2:]:
            writer.append(event)
        writer.flush()
    written = stream.read_json()
    assert len(written) == len(python_events())
    for item in written:
        validator.validate(item)
    ours = MaterializedState()
    ours.apply_json(written)
    theirs = node("read", url)
    assert theirs["count"] == len(written)
    assert theirs["state"] == dump(ours)
    assert ours.get("note", "n9") == {"id": "n9", "text": "new by upsert"}
    assert ours.get("user", "u2") is None and ours.get("user", "u1")["name"] == "Ada L."


def test_typescript_to_python_through_our_server(memory_server: Any) -> None:
    url = f"{memory_server.url}/v1/stream/state-ts-{uuid.uuid4().hex}"
    result = node("write", url)
    items = DurableStream(url).read_json()
    assert items == result["events"]   # the TS events arrive as written, one message each
    ours = MaterializedState()
    for i, item in enumerate(items):
        ours.apply(parse_event(item, f"message {i}"))
    assert dump(ours) == result["state"]
    assert [h["headers"]["operation"] for h in items].count("upsert") == 2


def test_every_written_event_validates(memory_server: Any, validator: Any) -> None:
    """Builders, the writer's transactions and a snapshot: all schema-valid on the wire."""
    url = f"{memory_server.url}/v1/stream/state-valid-{uuid.uuid4().hex}"
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    with StateWriter(stream, producer_id="v") as writer:
        for event in python_events():
            writer.append(event)
        writer.reset()
        writer.flush()
    state = MaterializedState()
    rng = random.Random(3)
    for t in ("user", "note"):
        for k in range(5):
            state.apply(parse_event({"type": t, "key": str(k), "value": state_gen.value(rng),
                                     "headers": {"operation": "insert"}}))
    target = DurableStream(f"{url}-snap")
    write_snapshot(state, target, reset_stream=stream)
    items = stream.read_json() + target.read_json()
    assert items, "nothing was written"
    for item in items:
        validator.validate(item)


def test_server_registry_is_a_state_stream(memory_server: Any, validator: Any) -> None:
    """__registry__ (written by the server) parses, validates and materializes,
    here and in the TS MaterializedState."""
    name = f"state-reg-{uuid.uuid4().hex}"
    DurableStream(f"{memory_server.url}/v1/stream/{name}").create(
        content_type="application/json")
    registry = f"{memory_server.url}/v1/stream/__registry__"
    items = DurableStream(registry).read_json()
    for item in items:
        validator.validate(item)
        parse_event(item)
    ours = MaterializedState()
    ours.apply_json(items)
    assert ours.get("stream", name)["path"] == name
    assert node("read", registry)["state"] == dump(ours)


def test_upsert_kept_on_the_wire_when_asked(memory_server: Any) -> None:
    """upsert_as="upsert" writes the TS helpers' operation; both sides read it alike."""
    url = f"{memory_server.url}/v1/stream/state-upsert-{uuid.uuid4().hex}"
    stream = DurableStream(url)
    stream.create(content_type="application/json")
    with StateWriter(stream, producer_id="u", upsert_as="upsert") as writer:
        writer.append(SCHEMA.notes.upsert(Note(id="n1", text="a")))
        writer.append(SCHEMA.notes.upsert(Note(id="n1", text="b")))
    items = stream.read_json()
    assert [i["headers"]["operation"] for i in items] == ["upsert", "upsert"]
    ours = MaterializedState()
    ours.apply_json(items)
    assert node("read", url)["state"] == dump(ours)
    assert ours.get("note", "n1") == {"id": "n1", "text": "b"}


def test_stream_db_follows_what_typescript_wrote(memory_server: Any) -> None:
    """The TS helpers' events (insert, update, upsert, delete, txid) in a typed StreamDB."""
    from duralog.state import StreamDB

    url = f"{memory_server.url}/v1/stream/state-tsdb-{uuid.uuid4().hex}"
    result = node("write", url)

    class TsUser(BaseModel):
        id: str
        name: str

    schema = StateSchema({"users": Collection(type="user", model=TsUser, primary_key="id"),
                          "notes": Collection(type="note", model=Note, primary_key="id")})
    with StreamDB(url, schema) as db:
        db.preload(timeout=30)
        db.await_txid("ts-1", timeout=30)
        expected = {t: dict(rows) for t, rows in result["state"]["data"]}
        assert {k: v.model_dump() for k, v in db.users.items()} == expected["user"]
        assert {k: v.model_dump() for k, v in db.notes.items()} == expected["note"]
