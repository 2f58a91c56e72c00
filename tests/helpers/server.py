"""The real service, ``python -m app.local``, in a subprocess on a free loopback port, for tests.

Usage::

    from tests.helpers.server import ServiceProcess

    with ServiceProcess(data_dir, env={"STREAMSCRIBE_JOB_GRACE_S": "3"}) as svc:
        httpx.get(svc.url("/healthz"))
        svc.kill()            # SIGKILL, as a crash would (its worker processes follow)
        svc.start()           # a new server on the same data dir and port

Settings reach it the way they reach a deployment: ``STREAMSCRIBE_*`` environment variables.
Defaults suit a 2-core test machine: tiny.en, beam size 1, one thread per worker, and a URL
guard that admits the loopback media server on 127.0.0.1 (any port, yt-dlp's generic extractor)
while every other loopback or private address stays forbidden (:data:`LOOPBACK_GUARD_ENV`). The
server's output goes to ``data_dir/server.log`` (printed by :meth:`log_tail` when a test needs
it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from transcriber.urlguard import YOUTUBE_HOSTS

ROOT = Path(__file__).resolve().parents[2]

#: The URL guard of a test server: YouTube's hosts as by default, plus the loopback media
#: server (127.0.0.1, any port, direct media links through the generic extractor); 127.0.0.2,
#: ::1 and every other private address stay forbidden.
LOOPBACK_GUARD_ENV = {
    "STREAMSCRIBE_ALLOWED_HOSTS": ",".join((*YOUTUBE_HOSTS, "127.0.0.1")),
    "STREAMSCRIBE_ALLOWED_NETWORKS": "127.0.0.1/32",
    "STREAMSCRIBE_ALLOWED_PORTS": "*",
    "STREAMSCRIBE_ALLOW_GENERIC_EXTRACTOR": "1",
}

#: The same guard as :class:`app.settings.Settings` keywords, for apps built in a test.
LOOPBACK_GUARD_SETTINGS = {
    "allowed_hosts": (*YOUTUBE_HOSTS, "127.0.0.1"),
    "allowed_networks": ("127.0.0.1/32",),
    "allowed_ports": None,
    "allow_generic_extractor": True,
}

TEST_ENV = {
    "STREAMSCRIBE_MODEL": "tiny.en",
    "STREAMSCRIBE_ENGINE": "faster-whisper",
    "STREAMSCRIBE_BEAM_SIZE": "1",
    "STREAMSCRIBE_WORKERS": "2",
    "STREAMSCRIBE_THREADS": "1",
    **LOOPBACK_GUARD_ENV,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.env = {**TEST_ENV, **(env or {}), "STREAMSCRIBE_DATA_DIR": str(self.data_dir)}
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCRIBE_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.local", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url("/healthz"), timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully: jobs stop, workers exit), then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash. The pool's workers notice their parent is gone and exit."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServiceThread:
    """An app (e.g. from ``create_app``) served by uvicorn in a thread of this process.

    For tests that need a real HTTP server but build the app themselves (their own settings,
    an in-process mapper). The lifespan runs: start-up recovery, and mapper/store closing.
    """

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    base_url = ServiceProcess.base_url
    url = ServiceProcess.url

    def start(self, timeout: float = 30.0) -> ServiceThread:
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
