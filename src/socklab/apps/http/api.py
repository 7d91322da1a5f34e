"""The stable surface of socklab's HTTP layer: import from here, not from the modules behind it.

Why this exists: the chat (web page + WebSocket) and JSON-RPC over HTTP/WebSocket mount their
handlers on this layer. Everything they need is re-exported here and kept stable::

    from socklab.apps.http.api import HttpSettings, Router, Request, Response, WebSocket, serve_http

    router = Router()
    router.route("GET", "/hello")(lambda req: Response(200, [("content-type", "text/plain")], b"hi"))
    server = serve_http(HttpSettings(port=8080), router)
    server.serve_forever()

See docs/http.md for the request/response model, the limits and the WebSocket callbacks.
"""

from socklab.apps.http.protocol import AccessLog, HttpProtocol
from socklab.apps.http.router import FileSpan, Pending, Request, Response, Router
from socklab.apps.http.server import serve_http
from socklab.apps.http.settings import HttpSettings
from socklab.apps.http.static import StaticFiles
from socklab.apps.http.websocket import WebSocket

__all__ = ["AccessLog", "FileSpan", "HttpProtocol", "HttpSettings", "Pending", "Request", "Response", "Router",
           "StaticFiles", "WebSocket", "serve_http"]
