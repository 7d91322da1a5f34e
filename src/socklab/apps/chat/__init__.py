"""The chat app: rooms over TCP (line protocol) and WebSocket (web page), history in SQLite, Redis for
many nodes. Start with :mod:`socklab.apps.chat.hub` (the core) and ``docs/chat.md``."""
