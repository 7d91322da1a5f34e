"""``socklab peer``: a peer-to-peer gossip mesh where every node is both a client and a server.

See :mod:`socklab.apps.peer.node` for the pattern and docs/peer.md for a walk-through.
"""
