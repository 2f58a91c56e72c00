"""Wire formats for a stream of stored events: Server-Sent Events, NDJSON and plain text.

Each encoder turns one :class:`app.store.StoredEvent` into the bytes a client reads; the API
chooses one per request (``Accept`` or ``?format=``). SSE frames follow the HTML spec
(``id:``/``event:``/``data:`` lines and a blank line) so a browser's ``EventSource`` parses them
and resumes with ``Last-Event-ID``; idle streams get ``: ping`` comments so proxies and clients
keep the connection open.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.responses import StreamingResponse

from app.store import StoredEvent

FORMATS = {
    "sse": "text/event-stream",
    "ndjson": "application/x-ndjson",
    "text": "text/plain",
}

#: Headers for every streamed response: no caching, and no buffering by nginx-like proxies.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

class Heartbeat:
    """What :func:`with_heartbeats` yields when its source was idle for an interval."""


HEARTBEAT = Heartbeat()

T = TypeVar("T")


def choose_format(accept: str | None, explicit: str | None = None) -> str | None:
    """``sse`` | ``ndjson`` | ``text`` from ``?format=`` or else ``Accept``; None if neither fits.

    SSE is the default (no Accept, ``*/*``, or ``text/*`` without ``text/plain``).
    """
    if explicit:
        return explicit if explicit in FORMATS else None
    if not accept:
        return "sse"
    # Honour the client's order and q-values loosely: the first listed type we can serve wins.
    ranked = []
    for pos, part in enumerate(accept.split(",")):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranked.append((-q, pos, media.strip().lower()))
    for _, _, media in sorted(ranked):
        for name, mime in FORMATS.items():
            if media == mime:
                return name
        if media in ("*/*", "text/*", "application/*"):
            return "ndjson" if media == "application/*" else "sse"
    return None


def sse_frame(data: str, *, event: str | None = None, id: int | str | None = None,
              retry_ms: int | None = None) -> str:
    """One SSE event. Multi-line ``data`` becomes several ``data:`` lines, as the spec requires."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return "\n".join(lines) + "\n\n"


def sse_comment(text: str = "ping") -> str:
    """A comment line. No blank line after it: a blank line ends an event, and clients such as
    httpx-sse then report an empty ``message`` event (with the last id) after every ping."""
    return f": {text}\n"


def sse_event(ev: StoredEvent, retry_ms: int | None = None) -> str:
    return sse_frame(_json(ev.data), event=ev.type, id=ev.seq, retry_ms=retry_ms)


def ndjson_event(ev: StoredEvent) -> str:
    """The event's JSON form plus its ``id`` (the sequence number), one line."""
    return _json({"id": ev.seq, **ev.data}) + "\n"


def _json(data: Any) -> str:
    # ensure_ascii=False keeps transcripts readable; JSON escapes newlines, so one line.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class TextStream:
    """Plain text for ``curl --no-buffer``: each segment's text once it can be read in order.

    Parallel workers finish segments out of order; text is released as soon as every earlier
    segment has finished (or failed), so the output reads like the transcript. A fatal error
    becomes one ``error: ...`` line.
    """

    def __init__(self) -> None:
        self.next_index = 0
        self.pending: dict[int, str] = {}

    def feed(self, ev: StoredEvent) -> str:
        if ev.type == "segment":
            self.pending[ev.data["index"]] = ev.data["text"].strip()
        elif ev.type == "segment_error":
            self.pending[ev.data["index"]] = ""
        elif ev.type == "error":
            return self.flush() + f"error: {ev.data['message']}\n"
        elif ev.type == "done":
            return self.flush()
        else:
            return ""
        out = []
        while self.next_index in self.pending:
            text = self.pending.pop(self.next_index)
            self.next_index += 1
            if text:
                out.append(text + "\n")
        return "".join(out)

    def flush(self) -> str:
        """What is left, in index order, when the stream ends with holes."""
        out = [self.pending[i] + "\n" for i in sorted(self.pending) if self.pending[i]]
        self.pending.clear()
        return "".join(out)


async def with_heartbeats(
    source: AsyncGenerator[T, None], interval: float
) -> AsyncIterator[T | Heartbeat]:
    """Items of ``source``, with :data:`HEARTBEAT` after each ``interval`` seconds of silence.

    The source is closed when this iterator is (a client that left cancels the response, see
    :class:`EventStreamResponse`), which is what stops the work behind it.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield HEARTBEAT
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            try:
                await pending
            except (asyncio.CancelledError, Exception):
                pass  # the source is being torn down; its own error is not ours to raise
        await source.aclose()


class EventStreamResponse(StreamingResponse):
    """A streamed response that stops as soon as its client disconnects, even while idle.

    As sse-starlette does, the body and a listener on ``receive()`` run side by side; the
    ``http.disconnect`` message cancels the body, whose ``finally`` blocks close the job's
    event source. (Starlette's own ``StreamingResponse`` listens only on ASGI specs before 2.4
    and otherwise learns of a gone client only when a write fails.)
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with anyio.create_task_group() as group:

            async def first_wins(step: Callable[[], Awaitable[None]]) -> None:
                await step()
                group.cancel_scope.cancel()

            group.start_soon(first_wins, functools.partial(self._send_body, send))
            group.start_soon(first_wins, functools.partial(self.listen_for_disconnect, receive))
        if self.background is not None:
            await self.background()

    async def _send_body(self, send: Any) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            pass  # the client went away mid-write: the listener's cancel is on its way
