"""Sans-I/O protocols: bytes (or datagrams) in, events and bytes out.

Nothing in this package imports ``socket``, ``selectors``, ``threading`` or ``asyncio`` or reads a
clock; ``tests/protocols/test_import_graph.py`` checks it. Conventions shared by every module:

- **Feeding**: ``receive_data(data: bytes)`` buffers input; ``receive_data(b"")`` means EOF.
- **Events**: ``next_event()`` returns the next event or ``None`` when more data is needed
  (h11's style, one retrieval style for all protocols). Events are frozen dataclasses.
- **Errors**: a peer's bad input raises ``RemoteProtocolError`` (with a ``hint``); our own
  misuse raises ``LocalProtocolError``. Nothing else escapes (hypothesis checks it).
- **Output**: ``send(event) -> bytes``. UDP protocols take one datagram and return a list of
  ``(bytes, addr)`` to send.
"""
