"""The node's web console for operators (``[console]``): HTTPS, an admin token,
server-rendered pages over the node's own AdminService. See docs/operations.md."""

from gateway.server.console.app import Console

__all__ = ["Console"]
