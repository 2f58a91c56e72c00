"""Stand-ins for Modal's cloud — the one thing these tests cannot reach (no token, no network).

Everything that runs on our side of Modal is real in the tests that use these: the payload
codec, :class:`app.modal_mapper.ModalMapper`, :class:`app.modal_store.ModalDictStore`, and
the GPU method's body (the real ``Transcriber`` class, its ``@modal.enter`` model load and its
``transcribe`` method, run through Modal's own ``.local()`` on real weights). What is stood in
for is only the transport:

- :class:`MapCloud`: ``Transcriber(engine=..., model=...).transcribe.spawn.aio(payload)`` as
  Modal serves it — each call queued until one of a few "containers" (threads) is free, its
  ``FunctionCall`` answering ``get.aio()`` with the result (or raising what the input raised
  after Modal's retries) and ``cancel.aio()`` by dropping it: a queued call never starts, a
  running one's result is thrown away (``cancelled`` records every cancel). A group of
  segments, ``.transcribe_batch.spawn.aio(payloads)``, is one such call: it holds one
  "container" for all its segments, runs the real ``transcribe_batch`` through ``.local()``, and
  its cancel reaches every segment in it (``calls`` lists each call's indices, ``call_bytes``
  its pickled size, what Modal's 2 MiB input limit applies to). Tests steer the
  completion order with per-index delays, gates, or ``after`` (a segment starts only once
  another one's result is out).
  The same object serves ``.transcribe_sequential.remote_gen.aio(payloads, carry)`` as Modal
  serves a generator call: one "container" (a fresh instance, a thread) runs the real generator
  method through ``.local()``, each yielded item comes back pickled the moment it is yielded,
  a segment listed in ``failures`` makes the call raise when the container reaches it (what
  Modal raises after its retries), and closing the stream stops the generator at its next item.
- :class:`DictCloud`: a named ``modal.Dict``'s blocking ``get``/``put``/``update``; values are
  pickled on the way in and out, as Modal serialises them, so a value that could not
  travel fails here too and no caller can mutate what is stored.

Usage::

    cloud = MapCloud(Transcriber, containers=2, delays={0: 0.5}, failures={1: TimeoutError()},
                     after={2: 0})                 # segment 2 waits for segment 0's result
    mapper = ModalMapper(cloud)            # cloud(engine=..., model=...) like the real class
    cloud.started, cloud.finished, cloud.spawn_calls, cloud.cancelled
    cloud.calls, cloud.call_bytes          # each call's segment indices and its size on the wire
    cloud.gen_calls                        # [{"indices": [...], "carry": {...}}] per remote_gen call

    store = ModalDictStore(DictCloud())
"""

from __future__ import annotations

import asyncio
import contextvars
import pickle
import threading
import time
from collections.abc import AsyncIterator
from typing import Any


class MapCloud:
    """STAND-IN for Modal's cloud serving ``.map.aio`` of a class method (see module doc)."""

    def __init__(
        self,
        real_cls: Any,
        *,
        containers: int = 2,
        delays: dict[int, float] | None = None,
        gates: dict[int, threading.Event] | None = None,
        failures: dict[int, BaseException] | None = None,
        after: dict[int, int] | None = None,
    ):
        self.real_cls = real_cls
        self.containers = containers
        self.delays = delays or {}
        self.gates = gates or {}
        self.failures = failures or {}
        #: ``{i: j}``: segment i starts only once segment j's result is out (``spawn`` only).
        self.after = after or {}
        #: Indices whose result (or failure) a "container" handed back, in order (``spawn``).
        self.finished: list[int] = []
        #: The class parameters each instance was made with.
        self.instances: list[dict[str, Any]] = []
        #: The class parameters of every ``spawn`` call.
        self.spawn_calls: list[dict[str, Any]] = []
        #: Every payload received, in the order the mapper sent them.
        self.payloads: list[dict[str, Any]] = []
        #: Indices in the order a "container" started them.
        self.started: list[int] = []
        #: The context each ``spawn`` was made in (what Modal reads its parent input from).
        self.spawn_contexts: list[contextvars.Context] = []
        #: Indices of the calls the mapper cancelled (``FunctionCall.cancel``), in order.
        self.cancelled: list[int] = []
        #: Each spawned call's segment indices (one for ``transcribe``, a group for
        #: ``transcribe_batch``) and its argument's size pickled (as it crosses the wire).
        self.calls: list[list[int]] = []
        self.call_bytes: list[int] = []
        self._containers: asyncio.Queue | None = None
        #: Every ``remote_gen`` call: the segment indices it carried and its prompt state.
        self.gen_calls: list[dict[str, Any]] = []
        #: How many ``remote_gen`` streams were closed before their generator was done.
        self.gen_closed_early = 0

    def __call__(self, **params: Any) -> _Instance:
        self.instances.append(params)
        return _Instance(self, params)

    def _spawn(self, params: dict[str, Any], payload: Any, method: str = "transcribe") -> _Call:
        """``.transcribe.spawn.aio(payload)`` or ``.transcribe_batch.spawn.aio([payload, ...])``:
        the call is queued for a free "container"."""
        wire = pickle.dumps(payload)
        payload = pickle.loads(wire)  # what crosses the wire is a copy
        group = payload if method == "transcribe_batch" else [payload]
        self.payloads.extend(group)
        self.calls.append([p["index"] for p in group])
        self.call_bytes.append(len(wire))
        self.spawn_calls.append(params)
        self.spawn_contexts.append(contextvars.copy_context())
        if self._containers is None:
            # One class instance per "container", each serving one input at a time: as on
            # Modal, a container runs its @modal.enter once, before its first input.
            self._containers = asyncio.Queue()
            for _ in range(self.containers):
                self._containers.put_nowait(self.real_cls(**params))
        call = _Call(self, [p["index"] for p in group])
        call.task = asyncio.ensure_future(self._run_call(call, payload, method))
        return call

    async def _run_call(self, call: _Call, payload: Any, method: str) -> Any:
        container = await self._containers.get()  # queued until a "container" is free
        try:
            await asyncio.sleep(0)  # a cancel that came while the call was queued lands here
            if call.cancelled:  # cancelled while queued: it never starts
                raise asyncio.CancelledError
            self.started.extend(call.indices)

            def run() -> Any:
                for index in call.indices:
                    self._reach(index)
                return getattr(container, method).local(payload)

            return pickle.loads(pickle.dumps(await asyncio.to_thread(run)))
        finally:
            if call.indices[0] in self.started:
                self.finished.extend(call.indices)
            self._containers.put_nowait(container)

    def _reach(self, index: int) -> None:
        """A "container" starts on segment ``index``: its gate, turn, delay and failure apply."""
        gate = self.gates.get(index)
        if gate is not None and not gate.wait(timeout=60):
            raise AssertionError(f"gate for segment {index} never opened")
        deadline = time.monotonic() + 60
        while index in self.after and self.after[index] not in self.finished:
            if time.monotonic() > deadline:
                raise AssertionError(f"segment {self.after[index]} never finished before {index}")
            time.sleep(0.01)
        time.sleep(self.delays.get(index, 0.0))
        if index in self.failures:
            raise self.failures[index]

    def _run_gen(self, params: dict[str, Any], payloads: list[dict], carry: dict) -> AsyncIterator[Any]:
        """A generator call: what the async generator returned by ``remote_gen.aio`` does."""
        payloads, carry = pickle.loads(pickle.dumps((payloads, carry)))  # over the wire
        self.gen_calls.append({"indices": [p["index"] for p in payloads], "carry": carry})
        return self._stream_gen(self.real_cls(**params), payloads, carry)

    async def _stream_gen(self, container: Any, payloads: list[dict], carry: dict) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        end = object()

        def send(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone
                pass

        def reaching(payload: dict) -> dict:
            self.started.append(payload["index"])
            self._reach(payload["index"])
            return payload

        def container_thread() -> None:
            generator = container.transcribe_sequential.local((reaching(p) for p in payloads), carry)
            try:
                for item in generator:
                    send(pickle.loads(pickle.dumps(item)))
                    if stop.is_set():
                        return
                send(end)
            except Exception as err:  # what Modal raises to the caller after its retries
                send(err)
            finally:
                generator.close()

        threading.Thread(target=container_thread, name="stand-in-gpu-container", daemon=True).start()
        finished = False
        try:
            while True:
                item = await items.get()
                if item is end:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            stop.set()  # the segment already on the "GPU" finishes; nothing after it starts
            if not finished:
                self.gen_closed_early += 1


class _Instance:
    def __init__(self, cloud: MapCloud, params: dict[str, Any]):
        self.transcribe = _Method(cloud, params)
        self.transcribe_batch = _Method(cloud, params, "transcribe_batch")
        self.transcribe_sequential = _GenMethod(cloud, params)


class _Aio:
    """A Modal method's ``.aio`` flavour: ``thing.aio(...)``."""

    def __init__(self, aio: Any):
        self.aio = aio


class _Method:
    def __init__(self, cloud: MapCloud, params: dict[str, Any], name: str = "transcribe"):
        async def spawn(payload: Any) -> _Call:
            return cloud._spawn(params, payload, name)

        self.spawn = _Aio(spawn)


class _Call:
    """STAND-IN for a ``modal.FunctionCall``: ``get.aio()`` waits for the result (raising what
    the input raised after Modal's retries), ``cancel.aio()`` cancels it: a queued call never
    starts; a running one's result is dropped (a thread cannot be killed; Modal stops it)."""

    def __init__(self, cloud: MapCloud, indices: list[int]):
        self.cloud, self.indices = cloud, indices
        self.cancelled = False
        self.task: asyncio.Future | None = None

        async def get() -> Any:
            return await asyncio.shield(self.task)

        async def cancel() -> None:
            self.cancelled = True
            cloud.cancelled.extend(indices)
            if indices[0] not in cloud.started:
                self.task.cancel()

        self.get, self.cancel = _Aio(get), _Aio(cancel)


class _GenMethod:
    def __init__(self, cloud: MapCloud, params: dict[str, Any]):
        self.remote_gen = _RemoteGen(cloud, params)


class _RemoteGen:
    def __init__(self, cloud: MapCloud, params: dict[str, Any]):
        self.cloud, self.params = cloud, params

    def aio(self, payloads: list[dict], carry: dict) -> AsyncIterator[Any]:
        return self.cloud._run_gen(self.params, payloads, carry)


class DictCloud:
    """STAND-IN for a named ``modal.Dict`` (see module doc); ``calls`` counts round trips."""

    def __init__(self) -> None:
        self._data: dict[Any, bytes] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            self.calls += 1
            raw = self._data.get(key)
        return default if raw is None else pickle.loads(raw)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """As ``modal.Dict.put``: False, and nothing written, when ``skip_if_exists`` finds the
        key there (atomic: of several puts at once, exactly one creates it)."""
        encoded = pickle.dumps(value)
        with self._lock:
            self.calls += 1
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = encoded
        return True

    def update(self, other: dict[Any, Any], /) -> None:
        encoded = {k: pickle.dumps(v) for k, v in other.items()}
        with self._lock:
            self.calls += 1
            self._data.update(encoded)

    def expire(self, key: Any) -> None:
        """What Modal does to an entry left unused for 7 days: it is gone."""
        with self._lock:
            del self._data[key]

    def keys(self) -> list[Any]:
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        return len(self._data)
