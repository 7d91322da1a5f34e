"""Lessons: small socket programs in plain Python, one objective each (see ``socklab learn``)."""
