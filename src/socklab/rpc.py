"""socklab's JSON-RPC 2.0, in one import: ``from socklab import rpc``.

Why this exists: a stable public path for the client and the server pieces, whatever the
package layout behind it (``socklab.apps.rpc``)::

    from socklab import rpc

    svc = rpc.Service()

    @svc.method
    def add(a: int, b: int) -> int:
        return a + b

    server = rpc.serve(svc, ["tcp://127.0.0.1:0"]).start()
    with rpc.connect(server.urls[0]) as client:
        assert client.add(1, 2) == 3
    server.shutdown()
"""

from __future__ import annotations

from socklab.apps.rpc.aio_client import AsyncClient
from socklab.apps.rpc.client import Batch, Client, connect
from socklab.apps.rpc.errors import (
    CallTimeout,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RequestCancelled,
    RequestTimeout,
    RpcError,
    ServerError,
)
from socklab.apps.rpc.server import RpcServer, RpcSettings, serve
from socklab.apps.rpc.service import Service, demo_service

__all__ = [
    "AsyncClient",
    "Batch",
    "CallTimeout",
    "Client",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "ParseError",
    "RequestCancelled",
    "RequestTimeout",
    "RpcError",
    "RpcServer",
    "RpcSettings",
    "ServerError",
    "Service",
    "connect",
    "demo_service",
    "serve",
]
