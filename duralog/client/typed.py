"""Typed JSON streams: pydantic validation on append and on read.

A ``TypedStream`` wraps a JSON stream (PROTOCOL.md 9.1) with a type that
pydantic can validate (a ``BaseModel``, a ``TypedDict``, ``list[int]``, a
union...). Appends are validated before anything is sent, so an invalid item
never reaches the stream; reads validate each message and raise
``SchemaError`` naming the offset of the chunk that held the bad message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

try:
    from pydantic import TypeAdapter, ValidationError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("typed streams need pydantic: pip install 'duralog[typed]'") from exc

from ..protocol.offsets import START
from . import _core as C
from ._async import AsyncDurableStream, AsyncIdempotentProducer, AsyncReader
from ._sync import DurableStream, IdempotentProducer, Reader
from .errors import SchemaError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TypedBatch(Generic[T]):
    """Validated messages of one chunk, and the offset after them."""

    items: list[T]
    offset: str
    up_to_date: bool = False
    closed: bool = False


class _Schema(Generic[T]):
    def __init__(self, item_type: type[T] | Any) -> None:
        self.item_type = item_type
        self.adapter: TypeAdapter[T] = TypeAdapter(item_type)

    def dump(self, item: T | Any, url: str) -> Any:
        try:
            value = self.adapter.validate_python(item)
        except ValidationError as err:
            raise SchemaError(f"append to {url}: invalid item: {_brief(err)}", url=url,
                              reason=_brief(err)) from err
        return self.adapter.dump_python(value, mode="json")

    def load(self, chunk: C.Chunk, start: str, url: str) -> TypedBatch[T]:
        try:
            items = [self.adapter.validate_python(v) for v in chunk.json()]
        except ValidationError as err:
            raise SchemaError(f"read {url} at offset {start}: invalid message: {_brief(err)}",
                              url=url, reason=_brief(err), offset=start) from err
        return TypedBatch(items, chunk.offset, chunk.up_to_date, chunk.closed)


def _brief(err: ValidationError) -> str:
    first = err.errors()[0] if err.errors() else {}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return f"{loc}: {first.get('msg', str(err))}" if loc else str(first.get("msg", err))


class TypedStream(Generic[T]):
    """A JSON stream whose messages are ``item_type`` (validated both ways)."""

    def __init__(self, stream: DurableStream | str, item_type: type[T] | Any,
                 **stream_options: Any) -> None:
        self.stream = stream if isinstance(stream, DurableStream) else DurableStream(
            stream, content_type=C.JSON_TYPE, **stream_options)
        self._schema: _Schema[T] = _Schema(item_type)

    @property
    def url(self) -> str:
        return self.stream.url

    def create(self, *, initial: list[T] | None = None, **options: Any) -> C.StreamInfo:
        if initial is not None:
            options["json"] = [self._schema.dump(i, self.url) for i in initial]
        return self.stream.create(content_type=C.JSON_TYPE, **options)

    def append(self, *items: T | Any, close: bool = False) -> C.AppendResult:
        """Validate every item first; then append them as one request."""
        dumped = [self._schema.dump(i, self.url) for i in items]
        return self.stream.append_json(*dumped, close=close)

    def read(self, offset: str = START, *, live: C.LiveMode = None) -> TypedReader[T]:
        return TypedReader(self.stream.read(offset, live=live), self._schema, self.url)

    def producer(self, producer_id: str, **options: Any) -> TypedProducer[T]:
        options.setdefault("content_type", C.JSON_TYPE)
        return TypedProducer(self.stream.producer(producer_id, **options), self._schema,
                             self.url)


class TypedReader(Generic[T]):
    def __init__(self, reader: Reader, schema: _Schema[T], url: str) -> None:
        self.reader = reader
        self._schema = schema
        self._url = url

    @property
    def offset(self) -> str:
        return self.reader.offset

    def batches(self) -> Iterator[TypedBatch[T]]:
        start = self.reader.offset
        for chunk in self.reader:
            yield self._schema.load(chunk, start, self._url)
            start = chunk.offset

    def __iter__(self) -> Iterator[T]:
        for batch in self.batches():
            yield from batch.items

    def close(self) -> None:
        self.reader.close()


class TypedProducer(Generic[T]):
    """An idempotent producer that validates each item when it is queued."""

    def __init__(self, producer: IdempotentProducer, schema: _Schema[T], url: str) -> None:
        self.producer = producer
        self._schema = schema
        self._url = url

    def append(self, item: T | Any) -> None:
        self.producer.append_json(self._schema.dump(item, self._url))

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def close(self) -> None:
        self.producer.close()

    def __enter__(self) -> TypedProducer[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.producer.__exit__(*exc)


class AsyncTypedStream(Generic[T]):
    """The asyncio twin of ``TypedStream``."""

    def __init__(self, stream: AsyncDurableStream | str, item_type: type[T] | Any,
                 **stream_options: Any) -> None:
        self.stream = stream if isinstance(stream, AsyncDurableStream) else AsyncDurableStream(
            stream, content_type=C.JSON_TYPE, **stream_options)
        self._schema: _Schema[T] = _Schema(item_type)

    @property
    def url(self) -> str:
        return self.stream.url

    async def create(self, *, initial: list[T] | None = None, **options: Any) -> C.StreamInfo:
        if initial is not None:
            options["json"] = [self._schema.dump(i, self.url) for i in initial]
        return await self.stream.create(content_type=C.JSON_TYPE, **options)

    async def append(self, *items: T | Any, close: bool = False) -> C.AppendResult:
        dumped = [self._schema.dump(i, self.url) for i in items]
        return await self.stream.append_json(*dumped, close=close)

    def read(self, offset: str = START, *, live: C.LiveMode = None) -> AsyncTypedReader[T]:
        return AsyncTypedReader(self.stream.read(offset, live=live), self._schema, self.url)

    async def producer(self, producer_id: str, **options: Any) -> AsyncTypedProducer[T]:
        options.setdefault("content_type", C.JSON_TYPE)
        inner = await self.stream.producer(producer_id, **options)
        return AsyncTypedProducer(inner, self._schema, self.url)


class AsyncTypedReader(Generic[T]):
    def __init__(self, reader: AsyncReader, schema: _Schema[T], url: str) -> None:
        self.reader = reader
        self._schema = schema
        self._url = url

    @property
    def offset(self) -> str:
        return self.reader.offset

    async def batches(self) -> AsyncIterator[TypedBatch[T]]:
        start = self.reader.offset
        async for chunk in self.reader:
            yield self._schema.load(chunk, start, self._url)
            start = chunk.offset

    async def __aiter__(self) -> AsyncIterator[T]:
        async for batch in self.batches():
            for item in batch.items:
                yield item

    async def aclose(self) -> None:
        await self.reader.aclose()


class AsyncTypedProducer(Generic[T]):
    def __init__(self, producer: AsyncIdempotentProducer, schema: _Schema[T], url: str) -> None:
        self.producer = producer
        self._schema = schema
        self._url = url

    def append(self, item: T | Any) -> None:
        self.producer.append_json(self._schema.dump(item, self._url))

    async def flush(self, timeout: float | None = None) -> None:
        await self.producer.flush(timeout)

    async def close(self) -> None:
        await self.producer.close()

    async def __aenter__(self) -> AsyncTypedProducer[T]:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.producer.__aexit__(*exc)


__all__ = ["AsyncTypedStream", "TypedBatch", "TypedStream"]
