"""HTTP/1.1 and WebSocket: a static file server and the layer other apps mount handlers on.

Why this exists: the web is the first thing people build with sockets. This package is the
adapter between socklab's sans-I/O HTTP pieces (``socklab.protocols.http1``, ``http_paths``,
``ranges``; h11 and wsproto underneath) and the engines, plus a small router so the chat and
JSON-RPC apps can serve their endpoints beside static files. The public surface is
:mod:`socklab.apps.http.api`.
"""
