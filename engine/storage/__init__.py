"""The one gateway to bytes: typed records in, stored bytes out, and back.

``loaded`` holds one workflow in memory for a run (load once, flush once); ``commands`` is
what reaches a workflow from outside a run (send a message, cancel, recover, read a field,
the writes that start one); ``wire`` turns each typed record (``engine.records``) into
bytes and checks the shape of what it reads back; ``tree`` is history as a tree of
locations. Nothing else in the engine imports the codec or builds a key.
"""

from engine.storage.loaded import Storage, Writes
from engine.storage.tree import Node

__all__ = ["Node", "Storage", "Writes"]
