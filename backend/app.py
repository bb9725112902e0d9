"""Flask app factory speaking Label Studio's ML-backend protocol.

Routes: GET / and /health, POST /setup, POST /predict, POST /webhook, POST /train, GET /versions (+ the served
model's provenance and licences), GET /kpis (the nightly's learning-from-edits KPIs), GET /metrics.
Errors are JSON `{"error": "<one-line reason>", "reason": "<kind>"}` with 400/401/403/404/413/422/502/503/504, the
reason also in the HTTP status line (Label Studio shows only that: backend/bodies.py); 503s carry Retry-After.
No traceback or secret is ever in a reply; the worker keeps serving.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ls_io.errors import KINDS, StatusError
from ls_io.media import MediaFetcher

from .auth import check_basic, check_webhook
from .batching import BatchingSettings, Scheduler
from .batching_metrics import SchedulerMetrics
from .bodies import parse_json_object, status_line
from .errors import BadRequest, Overloaded, Unauthorized
from .jobs import TrainingJobs
from .kpis import KpiGauges, KpiSource
from .metrics import Registry
from .model import DAMBackend
from .model_store import Loader, ModelStore, SegmenterStore
from .settings import Settings

log = logging.getLogger("backend")
EXTENSION = "dam_backend"


def _json_body(settings: Settings) -> dict[str, Any]:
    """The body as a JSON object (any Content-Type), nesting limited; 413 over MAX_REQUEST_BYTES (werkzeug)."""
    return parse_json_object(request.get_data(cache=True), settings.max_json_depth)


def error_reply(status: int, reason: str, kind: str, retry_after: int | None = None) -> Response:
    """`{"error": reason, "reason": kind}` with the reason in the status line too (see backend/bodies.py)."""
    resp = jsonify(error=reason, reason=kind)
    resp.status = status_line(status, reason)
    if retry_after is not None:
        resp.headers["Retry-After"] = str(int(retry_after))
    return resp


class BatchGate:
    """At most `limit` batch /predict requests at once (0: no limit); the next one is told to come back.

    Kept beside the scheduler's region queue: that queue bounds the work waiting for the model, this bounds the
    request threads a long "Retrieve predictions" holds (it submits one task at a time), so clicks find a thread."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit, self.retry_after = limit, retry_after
        self._running = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "BatchGate":
        with self._lock:
            if self.limit and self._running >= self.limit:
                raise Overloaded(f"busy with {self._running} batch requests: retry in {self.retry_after} s",
                                 retry_after=self.retry_after)
            self._running += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1


def create_app(settings: Settings | None = None, *, loader: Loader | None = None,
               segmenter_factory: Callable[[], Any] | None = None, fetcher: MediaFetcher | None = None,
               batching: BatchingSettings | None = None) -> Flask:
    """Build the app. Tests pass `settings`, a model `loader` and a `segmenter_factory`; gunicorn uses the env
    (the scheduler's BATCH_*/QUEUE_*/*_DEADLINE_S variables are read from it unless `batching` is given)."""
    settings = settings or Settings.from_env()
    batching = batching or BatchingSettings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.torch_num_threads:
        import torch  # deferred like every model import: the app module stays light for its tests

        torch.set_num_threads(settings.torch_num_threads)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    metrics = Registry(failure_reasons=KINDS)
    gate = BatchGate(settings.max_batch_requests, settings.retry_after_seconds)
    store = ModelStore(settings, loader=loader, metrics=metrics)
    segmenters = SegmenterStore(settings, factory=segmenter_factory, device=store.device)
    jobs = TrainingJobs(settings.events_file, settings.train_command, settings.train_log_dir)
    observer = SchedulerMetrics()
    metrics.add(*observer.metrics)
    kpis, kpi_gauges = KpiSource.for_models_root(store.s3, settings.models_root_path), KpiGauges()
    metrics.add(*kpi_gauges.metrics)
    scheduler = Scheduler(store.get, batching, observer)
    backend = DAMBackend(settings, store, segmenters, fetcher or MediaFetcher(settings), jobs, metrics, scheduler)
    app.extensions[EXTENSION] = backend
    store.start_polling()
    if settings.warm_up_on_start:
        store.warm_up_async()
    log.info("settings: %s; batching: %s", settings.redacted(), batching)

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
        return error_reply(exc.status, str(exc), exc.kind if exc.kind in KINDS else "other",
                           getattr(exc, "retry_after", None) if exc.status == 503 else None)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = exc.code or 500
        if code == 413:
            reason = f"request body is over the {settings.max_request_bytes} byte limit (MAX_REQUEST_BYTES)"
        else:
            reason = " ".join((exc.description or exc.name).split())
        return error_reply(code, reason, "bad_request" if code < 500 else "other")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # The traceback goes to the log only; the reply names the type (no message: it could hold a secret).
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_reply(500, f"internal error ({type(exc).__name__}); see the backend log", "other")

    def health():
        loaded = store.loaded
        return jsonify(status="UP", model_class=type(backend).__name__, model_version=store.model_version,
                       model_loaded=loaded is not None, last_error=store.last_error)

    app.add_url_rule("/", "index", health, methods=["GET"])
    app.add_url_rule("/health", "health", health, methods=["GET"])

    @app.post("/setup")
    def setup():
        body = _json_body(settings)
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
        body = _json_body(settings)
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("predict needs 'tasks' (a list)")
        if len(tasks) > settings.max_tasks_per_request:
            raise BadRequest(f"{len(tasks)} tasks in one request, over the limit of {settings.max_tasks_per_request}"
                             " (MAX_TASKS_PER_REQUEST)")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        context = params.get("context")
        if context is not None and not isinstance(context, dict):
            raise BadRequest("params.context must be an object or null")
        ctx_result = (context or {}).get("result")
        if isinstance(ctx_result, list) and len(ctx_result) > settings.max_context_regions:
            raise BadRequest(f"{len(ctx_result)} items in context.result, over the limit of "
                             f"{settings.max_context_regions} (MAX_CONTEXT_REGIONS)")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("label_config must be a string")
        pinned = body.get("model_version")
        if pinned is not None and not isinstance(pinned, str):
            raise BadRequest("model_version must be a string")
        if ctx_result:  # interactive: an annotator is waiting, never turned away for load
            reply = backend.predict_reply(tasks, context, label_config, model_version=pinned)
        else:
            with gate:
                reply = backend.predict_reply(tasks, context, label_config, model_version=pinned)
        # "failed" is ours (Label Studio reads only "results"): which tasks got no prediction, and why.
        return jsonify(results=reply.results, model_version=reply.model_version, failed=reply.failures)

    @app.post("/webhook")
    def webhook():
        body = _json_body(settings)
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("webhook needs 'action'")
        return jsonify(status="ok", **backend.fit(action, body)), 201

    @app.post("/train")
    def train():
        """Label Studio's older "Start Training" call (1.23 sends START_TRAINING to /webhook instead)."""
        body = _json_body(settings)
        if "annotations" in body and not isinstance(body["annotations"], list):
            raise BadRequest("train's 'annotations' must be a list")
        return jsonify(status="ok", **backend.fit("START_TRAINING", body)), 201

    @app.get("/versions")
    def versions():
        return jsonify(versions=store.versions(), current=store.model_version, model_info=store.model_info())

    @app.get("/kpis")
    def learning_from_edits():
        return jsonify(kpis.reply(store.model_version))

    @app.get("/metrics")
    def prometheus():
        kpi_gauges.update(kpis.record())
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")

    return app


def backend_of(app: Flask) -> DAMBackend:
    """The DAMBackend behind an app (tests, benchmarks)."""
    return app.extensions[EXTENSION]
