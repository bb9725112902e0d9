"""gunicorn entry point: `gunicorn -c backend/gunicorn.conf.py 'backend.wsgi:app'`.

No --preload: each worker builds the app (and loads the model) itself, which CUDA requires.
"""
from .app import create_app

app = create_app()
