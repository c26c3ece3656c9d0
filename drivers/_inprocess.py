"""Live-mode wake-ups inside one process, for the stores that one process owns (memory,
LevelDB): ``notify`` reaches every open ``subscribe`` of that workflow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectSendStream


class InProcessWakeups:
    """Subscriptions by workflow id; a notification with none open is simply dropped."""

    def __init__(self) -> None:
        self.streams: dict[str, set[MemoryObjectSendStream[None]]] = {}

    @asynccontextmanager
    async def subscribe(self, workflow_id: str) -> AsyncIterator[AsyncIterator[None]]:
        send, receive = anyio.create_memory_object_stream[None](max_buffer_size=64)
        self.streams.setdefault(workflow_id, set()).add(send)
        try:
            async with receive:
                yield receive
        finally:
            self.streams[workflow_id].discard(send)
            send.close()

    def notify(self, workflow_id: str) -> None:
        for stream in self.streams.get(workflow_id, ()):
            try:
                stream.send_nowait(None)
            except anyio.WouldBlock:
                pass  # a wake-up is already queued; one is enough
