"""The web dashboard: ``durable-engine dashboard --store URL`` or ``create_app(store)``.

An ASGI app (Starlette) serving server-rendered pages (Jinja2) and a little hand-written
JavaScript that keeps the counts live and asks before every action; nothing is built or
fetched from the internet. ``import engine`` never imports this package: its libraries are
the ``dashboard`` extra.

Modules: ``app`` (``create_app``, error pages for every failure), ``views`` (the list, one
workflow, the JSON the pages poll), ``actions`` (message, wake, cancel, recover), ``pages``
(settings, templates, links and times), ``history`` (the history tree and the timeline),
``values`` (stored values as bounded text), ``server`` (uvicorn on a socket of our own).
"""

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # the libraries are an extra: say which
    raise ImportError(
        "engine.dashboard needs starlette, uvicorn and jinja2: "
        "pip install 'durable-engine[dashboard]'"
    ) from exc

from engine.dashboard.app import create_app

__all__ = ["create_app"]
