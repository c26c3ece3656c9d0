"""The command line: ``durable-engine`` (the console script) and ``python -m engine``.

``worker`` runs a Worker in its own process, logging JSON lines on stdout. ``list``,
``show``, ``start``, ``message``, ``wake``, ``cancel`` and ``recover`` reach the workflows
in a store through ``engine.Client``: Rich tables and trees for people (coloured only on a
terminal), or with ``--json`` one JSON document on stdout (datetimes as epoch floats).

Every command takes ``--store URL`` (or ``DURABLE_STORE``) and ``--namespace`` (or
``DURABLE_NAMESPACE``); the store is opened by ``open_store``, which finds its class by URL
scheme in ``stores._STORES``. ``memory://`` is a new empty store per command;
``leveldb:///path`` is shared by commands run one after another, never at once.

Exit codes: 0 done; 2 the command was wrong (missing or bad arguments, no store, bad JSON,
unknown store scheme or state, unknown workflow id, an ``--app`` that cannot be loaded);
1 the store failed or could not be reached, or anything unexpected; 130 interrupted. A
failure is one line on stderr, ``error: ...``: never a traceback, never a JSON log record.

Modules: ``stores`` (``open_store``, ``load_registry``), ``logs`` (``JsonFormatter``),
``render`` (what the commands print), ``app`` (the Typer commands and ``main``).
"""

from engine.cli.app import app, main
from engine.cli.logs import JsonFormatter
from engine.cli.stores import _STORES, load_registry, open_store

__all__ = ["_STORES", "JsonFormatter", "app", "load_registry", "main", "open_store"]
