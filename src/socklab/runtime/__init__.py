"""The runtime: a server's life from bind to the last close, and where running servers say who they are.

Why this exists: binding (and publishing the real port when bound to 0), serving until a signal,
shutting down in phases (stop accepting, ask connections to close, wait with a timeout, force; a
second Ctrl-C forces) and the registry that ``socklab ss`` reads are the same for every app. They
live here, above the engines and below the apps::

    core  <-  engines  <-  runtime  <-  apps  <-  cli

so the engines never import it and ``socklab.core`` does not depend on it
(``tests/test_layers.py`` checks this).

- :class:`Server` (``runtime.server``): one engine, its listeners, the three phases;
  :func:`bind_datagram` a server's extra UDP socket on that engine (TFTP's socket per transfer);
- :func:`serve_until_signalled` (``runtime.serving``): what every server command does last - the
  readiness line, the signals, what the user is told, the registry entry;
- :func:`register_server`, :func:`read_servers` (``runtime.registry``): the files ``socklab ss`` reads.
"""

from socklab.runtime.registry import Registration, read_servers, register_server, registry_dir
from socklab.runtime.server import Server, bind_datagram
from socklab.runtime.serving import announce_tls, describe_address, serve_until_signalled

__all__ = [
    "Registration",
    "Server",
    "announce_tls",
    "bind_datagram",
    "describe_address",
    "read_servers",
    "register_server",
    "registry_dir",
    "serve_until_signalled",
]
