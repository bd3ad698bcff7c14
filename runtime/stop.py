"""The exception that unwinds a swarm role's event loop cleanly (from a signal handler, a BYE, or a
fault injection), in a module of its own so that every role can raise it without importing the
process entry point (``rmio.runtime.proc``) that starts them."""

from __future__ import annotations


class Stop(Exception):
    """Raised to leave a role's event loop; the role then closes its sockets and exits 0."""
