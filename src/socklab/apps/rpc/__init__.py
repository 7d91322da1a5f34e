"""JSON-RPC 2.0: one program calling functions in another, over TCP, HTTP POST and WebSocket.

The public face is :mod:`socklab.rpc`; the pieces live here: :mod:`.service` (the methods),
:mod:`.dispatch` (running calls), :mod:`.server` (transports and listeners), :mod:`.client` and
:mod:`.aio_client`, :mod:`.errors`. The wire rules are sans-I/O in
:mod:`socklab.protocols.jsonrpc` and :mod:`socklab.protocols.framing`.
"""
