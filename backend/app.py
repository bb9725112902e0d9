"""Flask app factory speaking Label Studio's ML-backend protocol.

Routes: GET / and /health, POST /setup, POST /predict, POST /webhook, GET /versions, GET /metrics.
Errors are JSON `{"error": "<one-line reason>"}` with 400/401/413/422/502/503/504; the worker keeps serving.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ls_io.errors import StatusError
from ls_io.media import MediaFetcher

from .auth import check_basic, check_webhook
from .errors import BadRequest, Unauthorized
from .jobs import TrainingJobs
from .metrics import Registry
from .model import DAMBackend
from .model_store import Loader, ModelStore, SegmenterStore
from .settings import Settings

log = logging.getLogger("backend")
EXTENSION = "dam_backend"


def _json_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("request body is not valid JSON")
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def create_app(settings: Settings | None = None, *, loader: Loader | None = None,
               segmenter_factory: Callable[[], Any] | None = None, fetcher: MediaFetcher | None = None) -> Flask:
    """Build the app. Tests pass `settings`, a model `loader` and a `segmenter_factory`; gunicorn uses the env."""
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    metrics = Registry()
    store = ModelStore(settings, loader=loader, metrics=metrics)
    segmenters = SegmenterStore(settings, factory=segmenter_factory, device=store.device)
    jobs = TrainingJobs(settings.events_file, settings.train_command, settings.train_log_dir)
    backend = DAMBackend(settings, store, segmenters, fetcher or MediaFetcher(settings), jobs, metrics)
    app.extensions[EXTENSION] = backend
    store.start_polling()
    if settings.warm_up_on_start:
        store.warm_up_async()
    log.info("settings: %s", settings.redacted())

    @app.before_request
    def _auth_and_clock() -> None:
        g.started = time.perf_counter()
        path = request.path
        if path == "/webhook":
            if not check_webhook(request.args.get("token"), request.headers.get("Authorization"), settings):
                raise Unauthorized("webhook needs ?token=<WEBHOOK_SECRET>")
            return
        if path in {"/", "/health"} and settings.health_public:
            return
        if not check_basic(request.headers.get("Authorization"), settings):
            raise Unauthorized("basic auth required")

    @app.after_request
    def _count(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.inc(route=route, status=str(resp.status_code))
        started = g.get("started")
        if started is not None:
            metrics.latency.observe(time.perf_counter() - started, route=route)
        if resp.status_code == 401:
            resp.headers["WWW-Authenticate"] = 'Basic realm="dam-backend"'
        return resp

    @app.errorhandler(StatusError)
    def _status_error(exc: StatusError):
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        reason = " ".join((exc.description or exc.name).split())
        return jsonify(error=reason), exc.code or 500

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error=f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"), 500

    def health():
        loaded = store.loaded
        return jsonify(status="UP", model_class=type(backend).__name__, model_version=store.model_version,
                       model_loaded=loaded is not None, last_error=store.last_error)

    app.add_url_rule("/", "index", health, methods=["GET"])
    app.add_url_rule("/health", "health", health, methods=["GET"])

    @app.post("/setup")
    def setup():
        body = _json_body()
        schema = body.get("schema")
        if not isinstance(schema, str) or not schema.strip():
            raise BadRequest("setup needs 'schema' (the label config XML)")
        # A bad label config raises LabelConfigError: a 422 naming what is missing.
        version = backend.setup(schema, project=body.get("project"), extra_params=body.get("extra_params"),
                                hostname=body.get("hostname") if isinstance(body.get("hostname"), str) else None,
                                access_token=body.get("access_token") if isinstance(body.get("access_token"), str) else None)
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("predict needs 'tasks' (a list)")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        context = params.get("context")
        if context is not None and not isinstance(context, dict):
            raise BadRequest("params.context must be an object or null")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("label_config must be a string")
        results = backend.predict(tasks, context, label_config=label_config)
        return jsonify(results=results, model_version=results[0]["model_version"] if results else store.model_version)

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("webhook needs 'action'")
        return jsonify(status="ok", **backend.fit(action, body)), 201

    @app.get("/versions")
    def versions():
        return jsonify(versions=store.versions(), current=store.model_version)

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")

    return app


def backend_of(app: Flask) -> DAMBackend:
    """The DAMBackend behind an app (tests, benchmarks)."""
    return app.extensions[EXTENSION]
