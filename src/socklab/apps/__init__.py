"""Apps: sans-I/O protocols adapted to the transport contract, plus a thin CLI each."""
