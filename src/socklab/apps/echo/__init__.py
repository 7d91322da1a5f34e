"""Echo: the "hello world" of sockets, over TCP (stream) and UDP (datagrams)."""
