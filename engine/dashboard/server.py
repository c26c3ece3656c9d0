"""Serving the dashboard with uvicorn on a socket of our own, for ``durable-engine dashboard``.

The socket is bound before uvicorn starts, so a port in use is an ``OSError`` the command
turns into one line (uvicorn would log it and exit the process), and ``--port 0`` can say
which port it got. SIGINT and SIGTERM stop the server gracefully and the command returns,
so the store is closed and the exit code is 0 (uvicorn re-raises the signal by default).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv4 or IPv6, whichever ``host`` is)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family)


def address(sock: socket.socket) -> str:
    """The ``http://host:port`` a listening socket serves."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    await _Server(config).serve(sockets=[sock])


def store_label(url: str, namespace: str | None) -> str:
    """The store's URL for the page header, without a password, with its namespace."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{shown} (namespace {namespace})" if namespace else shown
