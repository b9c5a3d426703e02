"""duralog: a Durable Streams server, client and command line."""

__version__ = "0.1.0"
