"""StateSchema: typed collections of a state stream and their event builders.

The Python side of @durable-streams/state's ``createStateSchema``: each
collection names the event ``type`` it holds, a pydantic model for its values
and the model's primary-key field. ``schema.users.insert(User(...))`` builds a
validated change event whose key comes from the model (STATE-PROTOCOL.md 7:
values are validated before they are written).

The same names are refused as in the TS package (src/schema.ts): the reserved
collection names ``collections``, ``preload``, ``close``, ``utils`` and
``actions``, and two collections sharing one event type.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .events import MISSING, ChangeEvent, Operation

M = TypeVar("M", bound=BaseModel)

# src/schema.ts RESERVED_COLLECTION_NAMES, in its order (the error lists them).
RESERVED_COLLECTION_NAMES: tuple[str, ...] = ("collections", "preload", "close", "utils",
                                              "actions")


class StateSchemaError(ValueError):
    """A value that fails its collection's model, or a bad schema definition."""


def js_string(value: Any) -> str:
    """``String(value)`` as JavaScript writes it, so keys derived from a primary
    key field match the TS helpers' (``String(1.0)`` is "1", ``String(true)``
    "true")."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Collection(Generic[M]):
    """One collection: its event type, value model and primary-key field."""

    type: str
    model: type[M]
    primary_key: str
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise StateSchemaError("a collection's event type must be a non-empty string")
        if not (isinstance(self.model, type) and issubclass(self.model, BaseModel)):
            raise StateSchemaError(f"collection {self.name or self.type!r}: model must be a "
                              f"pydantic BaseModel subclass")
        if self.primary_key not in self.model.model_fields:
            raise StateSchemaError(f"collection {self.name or self.type!r}: the model "
                              f"{self.model.__name__} has no field {self.primary_key!r}")

    # -- values ---------------------------------------------------------------------------
    def validate(self, value: Any, what: str = "value") -> M:
        """``value`` (a model or a mapping) as a validated model instance."""
        if isinstance(value, self.model):
            return value
        try:
            return self.model.model_validate(value)
        except ValidationError as err:
            raise StateSchemaError(f"Validation failed for {self.type} {what}: "
                              f"{_issues(err)}") from None

    def dump(self, model: BaseModel) -> Any:
        """A model as the JSON value written to the stream."""
        return model.model_dump(mode="json", by_alias=True)

    def key_of(self, model: BaseModel, operation: str, key: str | None) -> str:
        if key is not None:
            if not isinstance(key, str) or not key:
                raise StateSchemaError(f"Cannot create {self.type} {operation} event: "
                                  f"key must be a non-empty string")
            return key
        derived = getattr(model, self.primary_key, None)
        if derived is None or derived == "":
            raise StateSchemaError(f"Cannot create {self.type} {operation} event: must provide "
                              f"either 'key' or a value with a non-empty "
                              f"'{self.primary_key}' field")
        return js_string(derived)

    # -- builders (src/schema.ts createCollectionHelpers) -----------------------------------
    def _change(self, operation: Operation, value: Any, key: str | None,
                old_value: Any, txid: str | None, timestamp: str | None,
                headers: Mapping[str, str] | None) -> ChangeEvent:
        model = self.validate(value, operation)
        old: Any = MISSING
        if old_value is not None and old_value is not MISSING:
            old = self.dump(self.validate(old_value, f"{operation} (oldValue)"))
        return ChangeEvent(self.type, self.key_of(model, operation, key), operation,
                           self.dump(model), old, txid, timestamp, dict(headers or {}))

    def insert(self, value: M | Mapping[str, Any], *, key: str | None = None,
               txid: str | None = None, timestamp: str | None = None,
               headers: Mapping[str, str] | None = None) -> ChangeEvent:
        return self._change("insert", value, key, MISSING, txid, timestamp, headers)

    def update(self, value: M | Mapping[str, Any], *, key: str | None = None,
               old_value: M | Mapping[str, Any] | None = None, txid: str | None = None,
               timestamp: str | None = None,
               headers: Mapping[str, str] | None = None) -> ChangeEvent:
        return self._change("update", value, key, old_value, txid, timestamp, headers)

    def upsert(self, value: M | Mapping[str, Any], *, key: str | None = None,
               txid: str | None = None, timestamp: str | None = None,
               headers: Mapping[str, str] | None = None) -> ChangeEvent:
        return self._change("upsert", value, key, MISSING, txid, timestamp, headers)

    def delete(self, key: str | None = None, *, old_value: M | Mapping[str, Any] | None = None,
               txid: str | None = None, timestamp: str | None = None,
               headers: Mapping[str, str] | None = None) -> ChangeEvent:
        old: Any = MISSING
        final_key = key
        if old_value is not None:
            model = self.validate(old_value, "delete (oldValue)")
            old = self.dump(model)
            if final_key is None:
                final_key = self.key_of(model, "delete", None)
        if not isinstance(final_key, str) or not final_key:
            # TS writes the key "undefined" when oldValue lacks the field; we refuse.
            raise StateSchemaError(f"Cannot create {self.type} delete event: must provide either "
                              f"'key' or 'old_value' with a {self.primary_key} field")
        return ChangeEvent(self.type, final_key, "delete", MISSING, old, txid, timestamp,
                           dict(headers or {}))


class StateSchema:
    """Named collections of one state stream (TS ``createStateSchema``).

        schema = StateSchema({
            "users": Collection(type="user", model=User, primary_key="id"),
        })
        event = schema.users.insert(User(id="1", name="Ada"))   # or schema["users"]

    ``schema["name"]`` always works; ``schema.name`` unless the name is one of
    this class's own attributes.
    """

    def __init__(self, collections: Mapping[str, Collection[Any]]) -> None:
        for name in collections:
            if name in RESERVED_COLLECTION_NAMES:
                raise StateSchemaError(
                    f'Reserved collection name "{name}" - this would collide with StreamDB '
                    f'properties ({", ".join(RESERVED_COLLECTION_NAMES)})')
        by_type: dict[str, str] = {}
        self._collections: dict[str, Collection[Any]] = {}
        for name, definition in collections.items():
            if not isinstance(definition, Collection):
                raise StateSchemaError(f"collection {name!r} must be a Collection")
            existing = by_type.get(definition.type)
            if existing is not None:
                raise StateSchemaError(f'Duplicate event type "{definition.type}" - used by both '
                                  f'"{existing}" and "{name}" collections')
            by_type[definition.type] = name
            named = Collection(definition.type, definition.model, definition.primary_key, name)
            self._collections[name] = named
        self._by_type = {c.type: c for c in self._collections.values()}

    def __getattr__(self, name: str) -> Collection[Any]:
        try:
            return self.__dict__["_collections"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Collection[Any]:
        return self._collections[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._collections)

    def __len__(self) -> int:
        return len(self._collections)

    @property
    def collections(self) -> dict[str, Collection[Any]]:
        """Collections by name (a reserved collection name, so never shadowed)."""
        return dict(self._collections)

    def for_type(self, event_type: str) -> Collection[Any] | None:
        """The collection that holds events of ``event_type`` (None: not ours)."""
        return self._by_type.get(event_type)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={c.type}:{c.model.__name__}" for n, c in self._collections.items())
        return f"StateSchema({inner})"


def _issues(err: ValidationError) -> str:
    return ", ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
                     for e in err.errors())
