"""Proof that nothing connects where the URL guard forbids: listening "trap" sockets.

Usage::

    from tests.helpers.guard import Trap

    trap = Trap("127.0.0.2")            # or Trap("::1"); a free port unless one is given
    ...                                  # make the service fetch http://127.0.0.2:{trap.port}/...
    assert not trap.touched()            # nothing connected since the last look
    trap.close()

The socket listens, so a guard that let a request through would really connect (a refused
connection would look the same as a guard that held); it is non-blocking, so ``touched()``
answers at once by trying ``accept()``. Every connection seen is counted in ``hits``.
"""

from __future__ import annotations

import socket


class Trap:
    """A listening socket nobody may connect to."""

    def __init__(self, host: str = "127.0.0.2", port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.hits = 0

    def url(self, path: str = "/a.webm") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def touched(self) -> bool:
        """Whether anything connected since the last call (pending connections are drained)."""
        seen = False
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return seen
            conn.close()
            self.hits += 1
            seen = True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Trap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False
