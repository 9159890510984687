"""Flower with its login on every page it serves.

    python hyperbench_flower.py -A worker.celery_app flower --basic-auth=user:password

Flower 2.x checks ``--basic-auth`` only on the handlers it decorates with
``@tornado.web.authenticated``: ``/metrics`` (the task names and worker hosts of
the whole platform, for Prometheus), ``/healthcheck`` and the static files
answer anyone (mher/flower#1129 removed the check from /metrics on purpose;
#1342 asks for it back). No Flower option turns it on, so this launcher does,
before handing over to ``celery ... flower`` unchanged:

- every Flower handler checks the credentials before it runs (``prepare``), so
  a page without them is a 401 with ``WWW-Authenticate: Basic``, whatever its
  path: the UI, the API, ``/metrics``, ``/healthcheck``, unknown paths;
- the static files need the same credentials;
- it refuses to start without ``--basic-auth`` (or ``FLOWER_BASIC_AUTH``): a
  Flower without a login is never started by accident.

A Prometheus scraper authenticates with ``basic_auth`` in its scrape config.
The compose stack (docker/compose.yml) and the image run Flower through here;
``tests/test_flower_auth.py`` starts it and asks every kind of page without
credentials.
"""

from __future__ import annotations

import sys
from typing import Any


def _require_basic_auth(handler: Any) -> None:
    """401 unless the request carries the configured Basic credentials (Flower's own comparison)."""
    from flower.views import BaseHandler

    options = handler.application.options
    if not options.basic_auth:
        import tornado.web

        raise tornado.web.HTTPError(403, "Flower runs without a login here; refusing to serve.")
    BaseHandler.get_current_user(handler)  # raises HTTPError(401) on missing or wrong credentials


def _with_login(original: Any) -> Any:
    """Wrap a handler's prepare() so that it checks the login first."""

    def prepare(self: Any) -> Any:
        _require_basic_auth(self)
        return original(self)

    return prepare


def _with_challenge(original: Any) -> Any:
    """Wrap a handler's write_error() so that a 401 carries the Basic challenge."""

    def write_error(self: Any, status_code: int, **kwargs: Any) -> Any:
        if status_code == 401:  # what makes a browser ask for the login (the API omits it)
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        return original(self, status_code, **kwargs)

    return write_error


def _patch_handlers(base: Any) -> None:
    """Make ``base`` and every subclass that defines prepare()/write_error() check the login."""
    # Every Flower handler class that defines prepare() (BaseHandler, the API's BaseApiHandler...)
    # checks the login first; flower.urls has imported them all.
    todo, classes = [base], []
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    for cls in classes:  # BaseHandler first: its prepare() is Tornado's, inherited
        if cls is base or "prepare" in vars(cls):
            cls.prepare = _with_login(cls.prepare)
        if cls is base or "write_error" in vars(cls):
            cls.write_error = _with_challenge(cls.write_error)


def _patch_static_files(urls: Any) -> None:
    """Serve the static files through a handler that needs the login too (``urls``: flower.urls)."""
    import tornado.web

    class AuthenticatedStaticFileHandler(tornado.web.StaticFileHandler):
        def prepare(self) -> Any:
            _require_basic_auth(self)
            return super().prepare()

        @_with_challenge
        def write_error(self, status_code: int, **kwargs: Any) -> None:
            super().write_error(status_code, **kwargs)

    # Tornado serves static_path through static_handler_class, ahead of the routes; Flower also
    # lists a /static/ route of its own (flower/urls.py): both get the checking handler.
    urls.settings["static_handler_class"] = AuthenticatedStaticFileHandler
    for i, entry in enumerate(urls.handlers):
        if isinstance(entry, tuple) and len(entry) > 1 and entry[1] is tornado.web.StaticFileHandler:
            urls.handlers[i] = (entry[0], AuthenticatedStaticFileHandler, *entry[2:])


def _refuse_to_start_without_login(flower_app: Any) -> None:
    """Make Flower (``flower_app``: flower.app.Flower) exit before it binds its port without --basic-auth."""
    original_listen = flower_app.start_http_server

    def start_http_server(self: Any) -> Any:
        # Before the port is bound (flower.command swallows a SystemExit raised later, in start()).
        if not self.options.basic_auth:
            raise SystemExit(
                "hyperbench_flower: Flower needs a login: pass --basic-auth=user:password "
                "(or set FLOWER_BASIC_AUTH)."
            )
        return original_listen(self)

    flower_app.start_http_server = start_http_server


def install() -> None:
    """Patch Flower so that every handler it serves needs the login. Idempotent."""
    # Imported first: flower.urls imports every handler class, so that _patch_handlers finds them all.
    from flower import urls
    from flower.app import Flower
    from flower.views import BaseHandler

    if getattr(BaseHandler, "_hyperbench_auth", False):
        return
    BaseHandler._hyperbench_auth = True  # type: ignore[attr-defined]
    _patch_handlers(BaseHandler)
    _patch_static_files(urls)
    _refuse_to_start_without_login(Flower)


def main(argv: list[str] | None = None) -> None:
    install()
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *(sys.argv[1:] if argv is None else argv)]
    celery_main()


if __name__ == "__main__":
    main()
