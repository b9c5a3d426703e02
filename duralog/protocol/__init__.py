"""The sans-IO protocol core: what a request means and what the answer is.

Nothing here touches a socket, a file or an event loop. The server feeds it
header values and bodies; the client reuses it for offsets and SSE parsing.
"""
