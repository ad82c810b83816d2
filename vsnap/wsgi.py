"""WSGI entry point for gunicorn: `gunicorn -c vsnap/gunicorn_conf.py vsnap.wsgi:app`."""
from .app import create_app

app = create_app()
