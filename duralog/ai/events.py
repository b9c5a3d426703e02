"""Model streams as one neutral event sequence.

Events are small dicts, as stored in the durable stream:
``{"type": "text", "text": ...}`` for each token or text delta, then exactly
one final event: ``{"type": "finish", "reason": ..., "usage": {...}}`` or
``{"type": "error", "message": ...}``. Other dicts with a ``type`` pass
through unchanged (tool calls, metadata of your own).

Sources are recognized item by item, by shape (duck typing):
OpenAI chat-completion chunks (``.choices[0].delta.content``,
``.finish_reason``, ``.usage``), Anthropic message stream events
(``content_block_delta`` / ``message_delta`` / ``message_start``),
plain ``str``/``bytes`` tokens, and event dicts. SDK objects and plain dicts
of the same shape both work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

Event = dict[str, Any]

_SENTINEL = object()


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _plain(value: Any) -> Any:
    """An SDK model object (pydantic) or dict as plain JSON-able data."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump())
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items()
                if not k.startswith("_") and v is not None}
    return str(value)


async def aiter_any(source: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    """An async iterator over a sync or async iterable; a blocking SDK iterator is
    stepped in a worker thread so the event loop keeps serving others."""
    if hasattr(source, "__aiter__"):
        async for item in source:  # type: ignore[union-attr]
            yield item
        return
    it = iter(source)  # type: ignore[arg-type]
    while True:
        item = await asyncio.to_thread(next, it, _SENTINEL)
        if item is _SENTINEL:
            return
        yield item


class _Tracker:
    """What a source said about its end: finish reason and usage, gathered as it goes."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.final: Event | None = None

    def events(self, item: Any) -> list[Event]:
        if isinstance(item, str):
            return [{"type": "text", "text": item}] if item else []
        if isinstance(item, bytes):
            return self.events(item.decode("utf-8", "replace"))
        choices = _get(item, "choices")
        if choices is not None and _get(item, "object", "chat.completion.chunk") != "response":
            return self._openai(item, choices)
        kind = _get(item, "type")
        if isinstance(kind, str):
            if kind in ("finish", "error"):
                self.final = _plain(item)
                return []
            if kind.startswith(("message_", "content_block_")) or kind == "ping":
                return self._anthropic(item, kind)
            return [_plain(item)]
        raise TypeError(f"cannot turn a {type(item).__name__} into a model event")

    def _openai(self, chunk: Any, choices: Any) -> list[Event]:
        out: list[Event] = []
        usage = _get(chunk, "usage")
        if usage is not None:
            self.usage.update(_plain(usage))
        for choice in choices or []:
            delta = _get(choice, "delta")
            text = _get(delta, "content") if delta is not None else None
            if text:
                out.append({"type": "text", "text": text})
            reason = _get(choice, "finish_reason")
            if reason:
                self.reason = reason
        return out

    def _anthropic(self, event: Any, kind: str) -> list[Event]:
        if kind == "content_block_delta":
            delta = _get(event, "delta")
            if _get(delta, "type") == "text_delta" and _get(delta, "text"):
                return [{"type": "text", "text": _get(delta, "text")}]
        elif kind == "message_start":
            usage = _get(_get(event, "message"), "usage")
            if usage is not None:
                self.usage.update(_plain(usage))
        elif kind == "message_delta":
            reason = _get(_get(event, "delta"), "stop_reason")
            if reason:
                self.reason = reason
            usage = _get(event, "usage")
            if usage is not None:
                self.usage.update(_plain(usage))
        return []

    def finish(self) -> Event:
        if self.final is not None:
            return self.final
        event: Event = {"type": "finish", "reason": self.reason or "stop"}
        if self.usage:
            event["usage"] = self.usage
        return event


async def normalize(source: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Event]:
    """Neutral events from any supported source, ending with one final event.

    An exception raised by the source ends the sequence with an error event
    (the stream then records what went wrong instead of stopping mid-air).
    """
    tracker = _Tracker()
    try:
        async for item in aiter_any(source):
            for event in tracker.events(item):
                yield event
            if tracker.final is not None:
                break
    except Exception as exc:  # the model failed: record it as the end
        yield {"type": "error", "message": str(exc) or type(exc).__name__}
        return
    yield tracker.finish()


def is_final(event: Event) -> bool:
    return event.get("type") in ("finish", "error")
