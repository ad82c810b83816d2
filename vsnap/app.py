"""The Flask app factory."""
from __future__ import annotations

import logging
import os

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .api import init_api
from .config import Settings
from .logs import setup_logging
from .services import Services
from .worker import Worker

MAX_BODY_BYTES = 1 << 20


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    settings = settings or Settings.from_env()
    setup_logging(os.environ.get("VSNAP_LOG_FORMAT", "text"))
    app = Flask("vsnap")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Flask's documented switch; app.json is typed as the JSONProvider base, which lacks it.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["vsnap"] = services = services or Services.build(settings)
    try:
        services.recover()
    except Exception:  # serve anyway: each request then reports what is wrong
        logging.getLogger(__name__).exception("start-up recovery failed")
    if settings.worker_enabled:
        app.extensions["vsnap.worker"] = worker = Worker(settings, services)
        worker.start()
    if settings.trusted_proxy:
        # Behind nginx: the client address comes from X-Forwarded-For (throttling uses it).
        # Flask's documented way to wrap the WSGI app; mypy sees a method being replaced.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]
    init_api(app)

    return app
