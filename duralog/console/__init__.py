"""The web console: the static page ``duralog serve`` shows at ``/``.

Plain HTML, CSS and JavaScript modules in ``static/``, written to run as they
are: no build step, nothing fetched from a CDN, no Node at run time. The page
talks to the server only through the Durable Streams protocol (the same
requests any client makes, with the user's token), plus ``/console/info`` for
the server's version and settings and ``/metrics`` for live figures.
``duralog.server.console.ConsoleApp`` serves these files.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable

STATIC: Traversable = files(__name__) / "static"

__all__ = ["STATIC"]
