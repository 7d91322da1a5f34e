"""Tools for debugging network programs: connect/listen, ss, tap, bench."""
