"""TFTP (RFC 1350 with options 2347/2348/2349/7440): a server on socklab's engines and a client."""
