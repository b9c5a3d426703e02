"""The ASGI application: HTTP <-> protocol <-> store."""

from .app import DuralogApp, create_app
from .config import Config

__all__ = ["Config", "DuralogApp", "create_app"]
