"""Loading an engine once per process: :func:`get_engine` and its cache."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

from transcriber.engine.base import ENGINES, Engine, EngineConfig, UnknownEngine
from transcriber.engine.faster import FasterWhisperEngine
from transcriber.engine.pytorch import OpenAIWhisperEngine
from transcriber.vocab import EngineName


def load_engine(config: EngineConfig) -> Engine:
    """Load the model once; callers keep the engine for many segments."""
    if config.engine == EngineName.FASTER_WHISPER:
        return FasterWhisperEngine(config)
    if config.engine == EngineName.OPENAI_WHISPER:
        return OpenAIWhisperEngine(config)
    raise UnknownEngine(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")


# --------------------------------------------------------------------------- per-process cache


class EngineCache:
    """Loaded engines by config, least recently used first out.

    A worker serves one config almost always; room for two lets a process alternate (say a
    sequential job on another model) without reloading on every switch.
    """

    def __init__(self, maxsize: int = 2):
        self.maxsize = maxsize
        self.loads = 0  # how many models this cache has loaded (tests check it stays at one)
        self.load_seconds = 0.0
        self._engines: OrderedDict[EngineConfig, Engine] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: EngineConfig) -> Engine:
        # Under the lock so two threads asking for a cold config load it once.
        with self._lock:
            engine = self._engines.get(config)
            if engine is None:
                started = time.perf_counter()
                engine = load_engine(config)
                self.load_seconds += time.perf_counter() - started
                self.loads += 1
                self._engines[config] = engine
                while len(self._engines) > self.maxsize:
                    self._engines.popitem(last=False)
            self._engines.move_to_end(config)
            return engine

    def clear(self) -> None:
        with self._lock:
            self._engines.clear()


_process_cache: tuple[int, EngineCache] | None = None
_process_cache_lock = threading.Lock()


def engine_cache() -> EngineCache:
    """This process's cache, made on first use; a forked child gets a fresh one, not its
    parent's models (CTranslate2 and torch state does not survive a fork reliably)."""
    global _process_cache
    with _process_cache_lock:
        if _process_cache is None or _process_cache[0] != os.getpid():
            _process_cache = (os.getpid(), EngineCache())
        return _process_cache[1]


def get_engine(config: EngineConfig) -> Engine:
    """The engine for ``config``, loaded at most once per process (``run_job`` calls this)."""
    return engine_cache().get(config)
