"""LLM helpers: model streams into durable streams, and back out, with resume.

``write_events`` takes an OpenAI SDK stream, an Anthropic SDK stream (both
duck-typed: the SDKs are not needed at runtime) or any (async) iterator of
text or events, and writes it to a JSON durable stream with low latency
(tokens batched by a few milliseconds or KiB), ending with a final event: the
finish reason and usage, or the error. ``read_events`` reads it back, live,
from any offset. ``aisdk`` and ``tanstack`` write the wire formats the
TypeScript transports read (npm ``@durable-streams/aisdk-transport`` and
``@durable-streams/tanstack-ai-transport``), with one-call Starlette/FastAPI
responses. docs/ai.md is the guide.
"""

from .events import normalize
from .reader import AsyncEventReader, read_events, read_text
from .writer import write_events, write_events_sync

__all__ = ["AsyncEventReader", "normalize", "read_events", "read_text", "write_events",
           "write_events_sync"]
