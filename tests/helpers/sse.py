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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

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
