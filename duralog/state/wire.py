"""Fast decoding of state-stream chunks (msgspec), for catch-up reads.

A read chunk of a JSON stream is a JSON array of messages. Decoding it into
small msgspec structs (not tracked by the cyclic GC) instead of dicts, and
keeping each ``value`` as its raw JSON text until someone reads it, is what
lets ``MaterializedState.apply_bytes`` materialize hundreds of thousands of
events per second. The structs check the shapes of STATE-PROTOCOL.md 5.1/5.2
(strings, the operation and control enums); what they cannot say (a value
required for insert, a message that is neither change nor control) is
checked by the caller. Any failure here sends the caller to the precise,
slower path (``events.parse_event``), which names the bad message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Raw, UnsetType

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class WireHeaders(msgspec.Struct, gc=False):
    operation: Literal["insert", "update", "delete", "upsert"] | UnsetType = UNSET
    control: Literal["snapshot-start", "snapshot-end", "reset"] | UnsetType = UNSET
    txid: NonEmpty | UnsetType = UNSET
    # RFC 3339 is checked on the slow path only when present (rare in bulk data).
    timestamp: str | UnsetType = UNSET
    offset: NonEmpty | UnsetType = UNSET


class WireEvent(msgspec.Struct, gc=False):
    headers: WireHeaders
    type: NonEmpty | UnsetType = UNSET
    key: NonEmpty | UnsetType = UNSET
    value: Raw | UnsetType = UNSET
    old_value: Raw | UnsetType = UNSET


_chunk = msgspec.json.Decoder(list[WireEvent])
_any = msgspec.json.Decoder()


def decode_chunk(data: bytes) -> list[WireEvent] | None:
    """The chunk's messages, or None when anything is off (use the slow path)."""
    try:
        return _chunk.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def decode_value(raw: Raw) -> Any:
    return _any.decode(raw)


__all__ = ["UNSET", "Raw", "WireEvent", "decode_chunk", "decode_value"]
