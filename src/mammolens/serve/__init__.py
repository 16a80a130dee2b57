"""Local web app (FastAPI + one static page): drop a study, see breast density and heat maps.

FastAPI/uvicorn are optional (``pip install -e ".[serve]"``) and imported only when an app is
created.
"""

from mammolens.serve.app import STATIC_DIR, create_app, is_loopback, sanitize_filename, serve

__all__ = ["STATIC_DIR", "create_app", "is_loopback", "sanitize_filename", "serve"]
