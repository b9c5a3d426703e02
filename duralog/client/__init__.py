"""The duralog client: Durable Streams over HTTP, blocking and asyncio twins.

    from duralog.client import DurableStream

    stream = DurableStream("http://127.0.0.1:4437/v1/stream/events")
    stream.create(content_type="application/json")
    stream.append_json({"hello": "world"})
    for chunk in stream.read(offset="-1", live="auto"):
        print(chunk.json(), chunk.offset)

See docs/client.md for the guide.
"""

from ._async import AsyncDurableStream, AsyncIdempotentProducer, AsyncReader
from ._core import (
    NO_RETRY,
    AppendResult,
    Chunk,
    JsonBatch,
    LiveMode,
    RetryPolicy,
    StreamInfo,
)
from ._sync import DurableStream, IdempotentProducer, Reader
from .checkpoint import (
    AsyncCheckpointedConsumer,
    Checkpoint,
    CheckpointedConsumer,
    FileCheckpoint,
    SQLiteCheckpoint,
)
from .errors import (
    BadRequest,
    ConnectionFailed,
    DurableStreamError,
    Forbidden,
    PayloadTooLarge,
    ProducerFenced,
    ProducerQueueFull,
    ProtocolViolation,
    RateLimited,
    SchemaError,
    SequenceGap,
    ServerError,
    StreamClosedError,
    StreamConflict,
    StreamGone,
    StreamNotFound,
    Unauthorized,
)

START = "-1"
NOW = "now"

__all__ = [
    "NOW",
    "NO_RETRY",
    "START",
    "AppendResult",
    "AsyncCheckpointedConsumer",
    "AsyncDurableStream",
    "AsyncIdempotentProducer",
    "AsyncReader",
    "BadRequest",
    "Checkpoint",
    "CheckpointedConsumer",
    "Chunk",
    "ConnectionFailed",
    "DurableStream",
    "DurableStreamError",
    "FileCheckpoint",
    "Forbidden",
    "IdempotentProducer",
    "JsonBatch",
    "LiveMode",
    "PayloadTooLarge",
    "ProducerFenced",
    "ProducerQueueFull",
    "ProtocolViolation",
    "RateLimited",
    "Reader",
    "RetryPolicy",
    "SQLiteCheckpoint",
    "SchemaError",
    "SequenceGap",
    "ServerError",
    "StreamClosedError",
    "StreamConflict",
    "StreamGone",
    "StreamInfo",
    "StreamNotFound",
    "Unauthorized",
]


def __getattr__(name: str) -> object:
    # The pydantic-typed streams load pydantic only when asked for.
    if name in ("TypedStream", "AsyncTypedStream"):
        from . import typed

        return getattr(typed, name)
    raise AttributeError(name)
