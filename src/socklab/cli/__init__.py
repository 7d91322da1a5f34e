"""The ``socklab`` command line: thin commands over the library."""
