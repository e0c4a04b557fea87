"""The training history: a read model of a store's runs, its JSON API and its HTML pages.

    history = History(catalog)        # caches manifests; the catalog tells it of commits and deletes
    install(http, history)            # http: an HttpHost (a ServiceHost's .http), before it starts

`rewind_checkpoint.server.build()` installs it on the checkpoint service's HTTP
port, and `rewind ckpt web --store URL` serves it straight on a store.
"""

from __future__ import annotations

from rewind_checkpoint.history import api, pages
from rewind_checkpoint.history.model import History
from rewind_runtime.http import HttpHost


def install(http: HttpHost, history: History) -> None:
    """Add the API's and the pages' routes to the host's app (before it starts), and answer browsers'
    errors (an unknown route, a missing token) with the pages' HTML error page."""
    http.app.include_router(api.router(history))
    view = pages.Pages(history)
    http.app.include_router(view.router())
    http.error_page = view.error_page


__all__ = ["History", "install"]
