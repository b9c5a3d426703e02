"""A Starlette chat backend built on duralog.ai, for the interop tests (and like docs/ai.md).

DURALOG_URL names the Durable Streams server. Routes:
  POST /api/chat                  AI SDK transport: 201 + Location (fake model, slow)
  GET  /api/chat/{chat_id}/stream AI SDK reconnect: 204 when nothing is in flight
  POST /api/session/{session_id}  TanStack transport: 202, the turn appended to the session
"""

from __future__ import annotations

import os
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from duralog.ai.aisdk import aisdk_reconnect_response, aisdk_response
from duralog.ai.fake import fake_openai_stream
from duralog.ai.tanstack import tanstack_session_response

DS = os.environ.get("DURALOG_URL", "http://127.0.0.1:4437")
REPLY = os.environ.get("AI_APP_REPLY", "The quick brown fox jumps over the lazy dog " * 4).strip()
DELAY = float(os.environ.get("AI_APP_DELAY", "0.03"))
ACTIVE: dict[str, str] = {}


async def chat(request: Request):
    body = await request.json()
    chat_id = body["id"]
    url = f"{DS}/v1/stream/chats/{chat_id}/{uuid.uuid4().hex}"
    ACTIVE[chat_id] = url
    return await aisdk_response(fake_openai_stream(REPLY, delay=DELAY), write_url=url,
                                mode=request.query_params.get("mode", "immediate"))


async def reconnect(request: Request):
    return await aisdk_reconnect_response(ACTIVE.get(request.path_params["chat_id"]))


async def session(request: Request):
    body = await request.json()
    messages = body.get("messages") or []
    new = [m for m in messages[-1:] if m.get("role") == "user"]
    url = f"{DS}/v1/stream/sessions/{request.path_params['session_id']}"
    return await tanstack_session_response(fake_openai_stream(REPLY, delay=DELAY),
                                           stream_url=url, new_messages=new, model="fake")


app = Starlette(routes=[
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/chat/{chat_id}/stream", reconnect, methods=["GET"]),
    Route("/api/session/{session_id}", session, methods=["POST"]),
])
