"""Native file transfer over TCP: zero-copy sending, verified and resumable receiving."""
