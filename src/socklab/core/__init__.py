"""The contract every part of socklab is written on: protocol, transport, settings, errors, trace."""
