"""``python -m app.local [--host 127.0.0.1] [--port 8000]``: the service on this machine.

Settings come from ``STREAMSCRIBE_*`` variables (:class:`app.settings.Settings`); segments go to
a local process pool with the model preloaded; jobs live in a SQLite file under the data dir.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from app.api import create_app
from app.settings import Settings, SettingsError
from app.store import SQLiteStore
from transcriber.engine import EngineConfig
from transcriber.fanout import LocalPoolMapper


def build_app(settings: Settings):
    """The FastAPI app with the local pool and the SQLite store (the pool starts at once so
    the model is loaded before the first request)."""
    mapper = LocalPoolMapper(
        workers=settings.workers or None,
        threads=settings.threads or None,
        preload=EngineConfig(engine=settings.engine, model=settings.model),
    ).start()
    return create_app(settings, mapper, SQLiteStore(settings.db_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.local", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"streamscribe: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = build_app(settings)
    print(f"streamscribe: http://{args.host}:{args.port}/  (data in {settings.data_dir})", flush=True)
    # One process: the job manager's state (listeners, grace timers) lives in this event loop.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
