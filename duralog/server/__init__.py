"""The ASGI application: HTTP <-> protocol <-> store."""

from .app import DuralogApp, create_app
from .config import Config
from .context import ServerContext

__all__ = ["Config", "DuralogApp", "ServerContext", "create_app"]
