"""What every store repeats, written once: write and workflow id checks, batch folding,
range ends, URLs, the ``async with`` lifecycle and the mapping of a client's errors to
``StorageError``.

A store module keeps only what its backend makes different: its limits (passed to
``check_writes`` at each call, so a test may lower a module's limit), the exception types of
its client, and how it reads and writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Self
from urllib.parse import SplitResult, urlsplit

from engine.errors import LeaseLostError, SerializationError, StorageError

Writes = Sequence[tuple[bytes, bytes | None]]
"""A batch: ``(key, value)`` pairs in order, ``None`` deleting the key."""

_BYTES = (bytes, bytearray)


def check_writes(
    store: str,
    writes: Sequence[tuple[object, object]],
    max_key: int | None = None,
    max_value: int | None = None,
    max_batch: int | None = None,
) -> None:
    """Reject a batch before anything is sent or applied, so it is all or nothing.

    Keys must be bytes and values bytes or None (``TypeError``); a key, a value or the whole
    batch over the store's limit (None: no limit) raises ``SerializationError`` naming the
    store and the key.
    """
    total = 0
    for key, value in writes:
        if not isinstance(key, _BYTES):
            raise TypeError(f"driver keys are bytes, got {type(key).__name__}")
        if value is not None and not isinstance(value, _BYTES):
            raise TypeError(f"driver values are bytes or None, got {type(value).__name__}")
        if max_key is not None and len(key) > max_key:
            raise SerializationError(
                f"{store}: key {bytes(key[:80])!r} is {len(key)} bytes, over its limit of "
                f"{max_key} bytes for a key"
            )
        if max_value is not None and value is not None and len(value) > max_value:
            raise SerializationError(
                f"{store}: value of key {bytes(key[:80])!r} is {len(value)} bytes, over its "
                f"limit of {max_value} bytes for a value"
            )
        if max_batch is not None:
            total += len(key) + (0 if value is None else len(value))
    if max_batch is not None and total > max_batch:
        raise SerializationError(
            f"{store}: batch of {len(writes)} writes holds {total} bytes, over its limit of "
            f"{max_batch} bytes for one request"
        )


def check_workflow_id(store: str, workflow_id: str, max_bytes: int, refused: str = "") -> None:
    """Refuse an id the store cannot hold (``Limits.check_workflow_id``).

    ``ValueError`` naming the store and its limit for an empty id, one that UTF-8 cannot
    encode (a lone surrogate), one longer than ``max_bytes`` in UTF-8 or one holding a
    character of ``refused``; ``TypeError`` for an id that is not a ``str``.
    """
    if not isinstance(workflow_id, str):
        raise TypeError(f"workflow ids are str, got {type(workflow_id).__name__}")
    if not workflow_id:
        raise ValueError(f"{store}: a workflow id is a non-empty str of at most {max_bytes} bytes")
    try:
        size = len(workflow_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{store}: workflow id {workflow_id[:80]!r} is not encodable as UTF-8 ({exc.reason} "
            f"at index {exc.start}); ids are UTF-8 text of at most {max_bytes} bytes"
        ) from None
    if size > max_bytes:
        raise ValueError(
            f"{store}: workflow id {workflow_id[:40]!r}... is {size} bytes in UTF-8, over its "
            f"limit of {max_bytes} bytes"
        )
    for char in refused:
        if char in workflow_id:
            raise ValueError(
                f"{store}: workflow id {workflow_id[:80]!r} holds {char!r}, which it cannot store"
            )


def latest_writes(writes: Writes) -> dict[bytes, bytes | None]:
    """Each key of a batch once, with its last write: a later write of a key wins."""
    return {bytes(key): None if value is None else bytes(value) for key, value in writes}


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with ``prefix``; None when there is none
    (the empty prefix, or one of only 0xFF bytes, reaches to the end of the key space)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def store_url(url: str, store: str, schemes: Sequence[str]) -> SplitResult:
    """``url`` split, if its scheme is one of ``schemes``; ValueError naming the store if not."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes:
        expected = ", ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"{store} URLs start with {expected}, got {url!r}")
    return parts


def refuse_namespace(store: str, namespace: str | None) -> None:
    """For a store that has no namespace: refuse one given to ``from_url``."""
    if namespace:
        raise ValueError(f"{store} has no namespace (given {namespace!r}); leave it out")


class ErrorMap:
    """``with map_errors("get"):`` turns the client's own exception types (and only those)
    into ``StorageError(store, operation, exc)`` at the store's boundary."""

    def __init__(self, store: str, *errors: type[BaseException]) -> None:
        self.store = store
        self.errors = errors

    @contextmanager
    def __call__(self, operation: str) -> Iterator[None]:
        try:
            yield
        except self.errors as exc:
            raise StorageError(self.store, operation, exc) from exc

    def failure(self, operation: str, cause: BaseException | None = None) -> StorageError:
        """The error of an operation that failed without a client exception to map."""
        return StorageError(self.store, operation, cause)

    def lease_lost(self, operation: str, workflow_id: str) -> LeaseLostError:
        """The error of a fenced write refused because its lease is no longer current."""
        return LeaseLostError(self.store, f"{operation} of workflow {workflow_id!r}")


class Lifecycle:
    """``async with store:`` closes the store on the way out, however the block ends."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
