"""gunicorn settings, driven by the environment (see backend/settings.py for the app's own variables).

WORKERS (default 1): each worker holds its own model copy, so 1 per GPU.
THREADS (default 4): concurrent requests per worker; they share the one model.
TIMEOUT (default 300 s): above Label Studio's 100 s predict timeout, so the worker is never killed mid-request.
PORT (default 9090), LOG_LEVEL (default info).
"""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '9090')}"
workers = int(os.environ.get("WORKERS", "1"))
threads = int(os.environ.get("THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("TIMEOUT", "300"))
graceful_timeout = 30
keepalive = 5
preload_app = False  # never load CUDA in the master: workers load the model
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
accesslog = "-"
errorlog = "-"
# Never log query strings: the webhook URL carries ?token=<WEBHOOK_SECRET>.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'
