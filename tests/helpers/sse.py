"""A Server-Sent Events parser that follows the HTML spec, for tests that read SSE with httpx.

The spec's rules (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
lines end with CRLF, LF or CR; an empty line dispatches the event; a line starting with ``:``
is a comment; ``field: value`` loses one leading space of the value; ``data`` lines are joined
with newlines; ``id`` sets the last event id (kept across events); an event with no data is not
dispatched; the event type defaults to ``message``.

Usage::

    with httpx.stream("GET", url) as r:
        for item in parse_sse(r.iter_text()):
            if isinstance(item, Comment): ...
            else: item.event, item.data, item.id
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Long enough for a whole job's stream; a server that never connects fails fast.
STREAM_TIMEOUT = httpx.Timeout(180.0, connect=10.0)

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    event: str
    data: str
    #: The last event id in force when this event was dispatched ("" if none yet).
    id: str
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Comment:
    text: str


@dataclass
class _State:
    event: str = ""
    data: list[str] = field(default_factory=list)
    last_id: str = ""
    retry: int | None = None


def parse_sse(chunks: Iterable[str]) -> Iterator[Event | Comment]:
    state = _State()
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while True:
            match = _LINE_END.search(buffer)
            # A lone CR at the end of the buffer may be the first half of CRLF: wait for more.
            if match is None or (match.group() == "\r" and match.end() == len(buffer)):
                break
            line, buffer = buffer[: match.start()], buffer[match.end() :]
            yield from _line(state, line)


def _line(state: _State, line: str) -> Iterator[Event | Comment]:
    if line == "":
        if state.data:
            yield Event(state.event or "message", "\n".join(state.data), state.last_id, state.retry)
        state.event, state.data = "", []
        return
    if line.startswith(":"):
        yield Comment(line[1:].lstrip(" "))
        return
    name, colon, value = line.partition(":")
    if colon and value.startswith(" "):
        value = value[1:]
    if name == "event":
        state.event = value
    elif name == "data":
        state.data.append(value)
    elif name == "id":
        if "\0" not in value:
            state.last_id = value
    elif name == "retry":
        if value.isdigit():
            state.retry = int(value)
    # Other field names are ignored, as the spec says.


class EventStream:
    """One SSE response read in a thread, the way a browser tab follows it.

    Keeps every event with its arrival time (``timed``; ``events`` without the times), the
    comments, the status, headers and (for a non-200 answer) the body. ``leave(event)``
    returning True hangs up right after that event, as a closed tab does; ``left_at`` (monotonic)
    and ``left_wall`` (wall clock, to compare with a store's times) record that moment.
    """

    def __init__(
        self,
        url: str,
        method: str = "POST",
        *,
        leave: Callable[[Event], bool] | None = None,
        **request: Any,
    ) -> None:
        self.timed: list[tuple[float, Event]] = []
        self.comments: list[Comment] = []
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body = ""
        self.started = time.monotonic()
        self.left_at: float | None = None
        self.left_wall: float | None = None
        self.error: BaseException | None = None
        self._leave = leave
        self._thread = threading.Thread(target=self._read, args=(method, url, request), daemon=True)
        self._thread.start()

    def _read(self, method: str, url: str, request: dict) -> None:
        try:
            with httpx.stream(method, url, timeout=STREAM_TIMEOUT, **request) as r:
                self.status, self.headers = r.status_code, r.headers
                if r.status_code != 200:
                    self.body = r.read().decode(errors="replace")
                    return
                for item in parse_sse(r.iter_text()):
                    if isinstance(item, Comment):
                        self.comments.append(item)
                        continue
                    self.timed.append((time.monotonic() - self.started, item))
                    if self._leave is not None and self._leave(item):
                        r.close()  # drop the connection now
                        self.left_at, self.left_wall = time.monotonic(), time.time()
                        return
        except BaseException as err:  # noqa: BLE001 - raised again by join()
            self.error = err

    def join(self, timeout: float = 180.0) -> EventStream:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end in time"
        if self.error is not None:
            raise self.error
        return self

    @property
    def events(self) -> list[Event]:
        return [e for _, e in self.timed]

    @property
    def closed_early(self) -> bool:
        return self.left_at is not None

    @property
    def types(self) -> list[str]:
        return [e.event for e in self.events]

    @property
    def job_id(self) -> str:
        assert self.headers is not None
        return self.headers["x-job-id"]

    def first(self, kind: str) -> tuple[float, Event]:
        """The first ``kind`` event with its arrival time (seconds after the request)."""
        return next((t, e) for t, e in self.timed if e.event == kind)

    def of(self, kind: str) -> list[dict]:
        return [e.json() for e in self.events if e.event == kind]

    def text(self) -> str:
        """The segments' text in reading order."""
        segments = sorted(self.of("segment"), key=lambda s: s["index"])
        return " ".join(s["text"] for s in segments)
