"""socklab: socket programming made real.

The public surface, in layers (each imports only the layers above it in this list; the table
is in ``tests/test_layers.py``, the prose in ``docs/architecture.md``):

- ``socklab.core``: the contract (Protocol, Transport), settings, errors, trace, sockets;
- ``socklab.protocols``: sans-I/O parsers and state machines (no sockets, threads or clocks);
- ``socklab.engines``: the eight ways to run a server;
- ``socklab.runtime``: the server lifecycle (Server), serving until a signal, the ``ss`` registry;
- ``socklab.apps``: echo, chat, transfer, tftp, rpc, http, peer;
- ``socklab.tools``: connect/listen, ss, tap, bench;
- ``socklab.cli``: the ``socklab`` command.
"""

from socklab.core.errors import SocklabError
from socklab.core.protocol import BufferedProtocol, DatagramProtocol, Protocol
from socklab.core.settings import ClientSettings, ServerSettings
from socklab.core.transport import DatagramTransport, Transport
from socklab.runtime import Server

__version__ = "0.1.0"

__all__ = [
    "BufferedProtocol",
    "ClientSettings",
    "DatagramProtocol",
    "DatagramTransport",
    "Protocol",
    "Server",
    "ServerSettings",
    "SocklabError",
    "Transport",
    "__version__",
]
