"""Backtalk's server: the page, its JSON API and the conversations (FastAPI + uvicorn)."""

from backtalk.server.app import create_app as create_app
from backtalk.server.run import serve as serve

__all__ = ["create_app", "serve"]
