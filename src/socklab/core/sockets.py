"""Making sockets: addresses, listeners, client connections and TLS contexts, traced.

Why this exists: every engine and every client starts the same way - resolve, ``socket()``,
``setsockopt()``, ``bind()``, ``listen()`` or ``connect()`` - and each step can fail in ways a
learner should understand. This module does those steps once, emits a trace event for each, and
translates failures into :mod:`socklab.core.errors` with one-line messages.

Addresses are written ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/path``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from typing import Any

from socklab.core.errors import AddressInUse, ResolveError, UsageError, translate_oserror
from socklab.core.trace import Tracer, format_addr

__all__ = [
    "Endpoint",
    "bind_source",
    "client_ssl_context",
    "client_targets",
    "close_traced",
    "connect_tcp",
    "literal_family",
    "open_tcp_listener",
    "open_udp_socket",
    "parse_endpoint",
    "remove_unix_socket",
    "server_ssl_context",
    "unix_socket_identity",
]


@dataclass(frozen=True)
class Endpoint:
    """Where to bind or connect: an IP host and port, or a Unix socket path."""

    host: str = ""
    port: int = 0
    unix: str | None = None

    def __str__(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix}"
        return format_addr((self.host, self.port))


def parse_endpoint(text: str, *, default_host: str = "127.0.0.1", default_port: int | None = None) -> Endpoint:
    """Parse ``HOST:PORT``, ``[::1]:PORT``, ``:PORT``, ``PORT`` or ``unix:/path``.

    Raises:
        UsageError: the text is not an address.
    """
    text = text.strip()
    if text.startswith("unix:"):
        return Endpoint(unix=text[5:])
    host, port_s = default_host, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise UsageError(f"bad address {text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:close], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise UsageError(f"bad address {text!r}: expected ':PORT' after ']'")
        port_s = rest[1:]
    elif text.count(":") == 1:
        host, port_s = text.split(":")
        host = host or default_host
    elif text.count(":") > 1:
        raise UsageError(f"bad address {text!r}: write IPv6 addresses as [addr]:port")
    elif text.isdigit():
        port_s = text
    else:
        host = text
    if not port_s:
        if default_port is None:
            raise UsageError(f"bad address {text!r}: no port (write HOST:PORT)")
        return Endpoint(host, default_port)
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise UsageError(f"bad address {text!r}: port must be a number 0..65535")
    return Endpoint(host, int(port_s))


def _resolve(host: str, port: int, socktype: int, passive: bool) -> list[tuple[Any, ...]]:
    flags = socket.AI_PASSIVE if passive else socket.AI_ADDRCONFIG
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socktype, 0, flags)
    except socket.gaierror as exc:
        raise translate_oserror(exc, f"resolving {host!r}") from exc
    if not infos:
        raise ResolveError(f"{host!r} resolved to no addresses")
    return infos


def _new_socket(family: int, socktype: int, tracer: Tracer | None) -> socket.socket:
    try:
        sock = socket.socket(family, socktype)
    except OSError as exc:
        raise translate_oserror(exc, "creating a socket") from exc
    if tracer:
        fam = {int(socket.AF_INET): "AF_INET", int(socket.AF_INET6): "AF_INET6"}.get(family, "AF_UNIX")
        typ = "SOCK_STREAM" if socktype == socket.SOCK_STREAM else "SOCK_DGRAM"
        tracer.emit("socket", sock, detail=f"{fam}, {typ}")
    return sock


def _setsockopt(sock: socket.socket, level: int, opt: int, value: int, name: str, tracer: Tracer | None) -> None:
    sock.setsockopt(level, opt, value)
    if tracer:
        tracer.emit("setsockopt", sock, detail=f"{name}={value}")


def _bind(sock: socket.socket, addr: Any, tracer: Tracer | None) -> None:
    try:
        sock.bind(addr)
    except OSError as exc:
        family, kind = sock.family, sock.type
        if tracer:
            tracer.emit("bind", sock, detail=f"{format_addr(addr)} failed: {exc.strerror}",
                        notes=_bind_notes(exc, family, kind, addr))
        sock.close()
        raise _bind_error(exc, family, kind, addr) from exc
    if tracer:
        tracer.emit("bind", sock, detail=f"{format_addr(sock.getsockname())}")


def _bind_error(exc: OSError, family: int, kind: int, addr: Any) -> Exception:
    """The one-line error for a failed bind; EADDRINUSE says what holds the address, per kind."""
    where = format_addr(addr)
    if exc.errno != errno.EADDRINUSE:
        return translate_oserror(exc, f"binding {where}")
    if family == socket.AF_UNIX:
        path = os.fsdecode(addr)
        if _is_other_file(path):
            hint = f"{path} exists and is not a socket: choose another path, or remove that file"
        else:
            hint = (f"another server is listening on this socket file (`ss -xlp | grep {path}` shows "
                    f"which); if none is, the file is a stale leftover: remove it (`rm {path}`) and start again")
    elif kind == socket.SOCK_DGRAM:
        hint = (f"another UDP socket is bound to this port - a running server (`socklab ss --port {addr[1]}` "
                "shows which); socklab shares a UDP port only when asked (--reuse-port)")
    else:
        hint = (f"another socket is bound there - a running server, or connections in TIME_WAIT "
                f"(socklab sets SO_REUSEADDR on listeners; see `socklab ss --port {addr[1]}`)")
    err = AddressInUse(f"address already in use while binding {where}: {hint}")
    err.errno = exc.errno
    return err


def _is_other_file(path: str) -> bool:
    """Is ``path`` something other than a socket (a regular file, a directory)?"""
    try:
        return not stat.S_ISSOCK(os.lstat(path).st_mode)
    except (OSError, ValueError):  # absent, or an abstract name ("\0...")
        return False


def _bind_notes(exc: OSError, family: int, kind: int, addr: Any) -> list[str]:
    if exc.errno == errno.EADDRINUSE:
        if family == socket.AF_UNIX:
            return ["EADDRINUSE on a Unix socket: the path exists. socklab removes a socket file nobody "
                    "listens on (connect() is refused); this one is in use, or is not a socket."]
        if kind == socket.SOCK_DGRAM:
            return ["EADDRINUSE: another UDP socket holds this port. UDP has no TIME_WAIT: a live process "
                    "owns it. Without SO_REUSEADDR/SO_REUSEPORT two servers cannot share it (with them, "
                    "the newer one would silently take its datagrams)."]
        return ["EADDRINUSE: another socket holds this address. If a server just exited, its old "
                "connections may sit in TIME_WAIT for 60 s; SO_REUSEADDR (which socklab sets) lets a "
                "listener bind anyway, so a live process must still own the port: `socklab ss --port N`."]
    if exc.errno == errno.EACCES:
        return ["EACCES: ports below 1024 need root (or CAP_NET_BIND_SERVICE)."]
    return []


def open_tcp_listener(host: str, port: int, *, unix: str | None = None, backlog: int = 1024,
                      reuse_port: bool = False, tracer: Tracer | None = None) -> socket.socket:
    """Create, bind and listen on one TCP (or Unix stream) socket, traced.

    ``host='::'`` (or ``''``) makes a dual-stack socket that accepts IPv4 and IPv6.

    Raises:
        AddressInUse, ResolveError, NetworkError: one-line reasons.
    """
    if unix is not None:
        sock = _new_socket(socket.AF_UNIX, socket.SOCK_STREAM, tracer)
        _remove_stale_unix_socket(unix)
        _bind(sock, unix, tracer)
    else:
        if host in ("", "::", "*"):
            family, addr = socket.AF_INET6, ("::", port)
        else:
            info = _resolve(host, port, socket.SOCK_STREAM, passive=True)[0]
            family, addr = info[0], info[4]
        sock = _new_socket(family, socket.SOCK_STREAM, tracer)
        _setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1, "SO_REUSEADDR", tracer)
        if reuse_port:
            _setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEPORT, 1, "SO_REUSEPORT", tracer)
        if family == socket.AF_INET6 and addr[0] == "::":
            _setsockopt(sock, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0, "IPV6_V6ONLY (dual-stack)", tracer)
        _bind(sock, addr, tracer)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise translate_oserror(exc, "listening") from exc
    if tracer:
        tracer.emit("listen", sock, detail=f"backlog={backlog}")
    return sock


def unix_socket_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the socket file at ``path``, or ``None`` (absent, not a socket)."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None


def remove_unix_socket(path: str, identity: tuple[int, int] | None) -> bool:
    """Remove the socket file a server bound, at shutdown - only if it is still the one it made.

    Closing a listening Unix socket leaves its file behind; a later server then finds the path
    taken. Another process may have replaced the file meanwhile (a second server that removed a
    file it thought stale): that one is left alone. Returns True when the file was removed.
    """
    if identity is None or unix_socket_identity(path) != identity:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file nobody listens on any more (a crashed server's leftover)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def open_udp_socket(host: str, port: int, *, connect_to: tuple[str, int] | None = None,
                    tracer: Tracer | None = None, reuse_port: bool = False,
                    source: tuple[str, int] | None = None) -> socket.socket:
    """A bound (server) or connected (client) UDP socket, traced.

    A port in use is refused (:class:`AddressInUse`), as for TCP: two UDP servers share a port
    only with ``reuse_port`` (SO_REUSEPORT), which both must set. ``source`` (with ``connect_to``):
    bind this ``(host, port)`` before connecting (see :func:`client_targets`). ``connect_to`` a
    name: the first of its addresses that ``connect()`` accepts (see :func:`udp_client_socket`).
    """
    if connect_to is not None:
        return udp_client_socket(Endpoint(connect_to[0], connect_to[1]), tracer=tracer, source=source)[0]
    if host in ("", "::", "*"):
        family, addr = socket.AF_INET6, ("::", port)
    else:
        info = _resolve(host, port, socket.SOCK_DGRAM, passive=True)[0]
        family, addr = info[0], info[4]
    sock = _new_socket(family, socket.SOCK_DGRAM, tracer)
    # No SO_REUSEADDR on UDP: it has no TIME_WAIT to step over, and on Linux it lets a second
    # socket bind a port already in use and silently take the first one's datagrams (and bind(0)
    # may hand two such sockets the same ephemeral port). Sharing a port is SO_REUSEPORT's job,
    # set only when asked for (--reuse-port).
    if reuse_port:
        _setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEPORT, 1, "SO_REUSEPORT", tracer)
    if family == socket.AF_INET6 and addr[0] == "::":
        _setsockopt(sock, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0, "IPV6_V6ONLY (dual-stack)", tracer)
    _bind(sock, addr, tracer)
    return sock


def udp_client_socket(endpoint: Endpoint, *, tracer: Tracer | None = None, source: tuple[str, int] | None = None,
                      connect: bool = True) -> tuple[socket.socket, Any, list[Any]]:
    """A UDP client socket for ``endpoint``: ``(socket, the address used, the name's other addresses)``.

    The rule for a name with several addresses: UDP has no handshake, so ``connect()`` sends
    nothing and fails only when an address cannot be reached at all (no route to it, no address
    of its family here). The addresses are tried in the resolver's order and the first one
    ``connect()`` accepts is used for the socket's life, as asyncio's ``create_datagram_endpoint``
    and netcat do: an AAAA record on a host with no IPv6 route falls back to its IPv4 address.
    Whether anything listens there is not known before a datagram goes: a connected socket then
    gets ICMP port unreachable as :class:`ConnectionRefused` - there is no fallback then (the
    datagram is gone; sending it again elsewhere is the protocol's choice, not the socket's).

    ``connect=False``: the socket stays unconnected (it talks to anyone, TFTP's transfer IDs), bound
    to ``source`` or to any address of the chosen address's family (``::`` dual-stack for IPv6);
    when the name has several addresses, the same ``connect()`` test runs on a throwaway socket.

    Raises:
        ResolveError: the name does not resolve; HostUnreachable and friends: no address could be
        connected to (the error names every address tried).
    """
    targets = client_targets(endpoint, socket.SOCK_DGRAM, source)
    what = format_addr((endpoint.host, endpoint.port))
    failures: list[tuple[Any, OSError]] = []
    chosen: tuple[int, Any, Any] | None = None
    for i, (family, addr, local) in enumerate(targets):
        if not connect and len(targets) == 1:
            chosen = (family, addr, local)
            break
        sock = _new_socket(family, socket.SOCK_DGRAM, tracer if connect else None)
        try:
            if local is not None:
                bind_source(sock, local, tracer if connect else None)
            sock.connect(addr)
        except OSError as exc:
            if connect and tracer:
                tracer.emit("connect", sock, peer=addr, detail=f"failed: {exc.strerror or exc}")
            # (after a failed bind bind_source has closed it, and traced that: nothing more here)
            close_traced(sock, tracer if connect else None, peer=addr,
                         detail=f"connect failed: {errno.errorcode.get(exc.errno or 0, exc)} - this attempt's socket is closed")
            failures.append((addr, exc))
            if tracer and i + 1 < len(targets):
                tracer.note(f"UDP to {format_addr(addr)} cannot be connected ({(exc.strerror or str(exc)).lower()}): "
                            f"trying {format_addr(targets[i + 1][1])}, the next address {what} resolves to")
            continue
        if connect:
            if tracer:
                tracer.emit("connect", sock, peer=addr, detail="UDP: only fixes the default peer; nothing is sent")
            return sock, addr, [t[1] for t in targets if t[1] != addr]
        sock.close()  # the throwaway test of an unconnected socket
        chosen = (family, addr, local)
        break
    else:
        first_addr, first = failures[0]
        tried = " and ".join(format_addr(a) for a, _ in failures)
        context = f"connecting UDP to {format_addr(first_addr)}" + (f" (tried {tried})" if len(failures) > 1 else "")
        raise translate_oserror(first, context) from first
    assert chosen is not None
    family, addr, local = chosen
    if local is not None:
        sock = open_udp_socket(local[0], local[1], tracer=tracer)
    else:
        sock = open_udp_socket("::" if family == socket.AF_INET6 else "0.0.0.0", 0, tracer=tracer)
    return sock, addr, [t[1] for t in targets if t[1] != addr]


def _describe_source(source: tuple[str, int]) -> str:
    host, port = source
    if not host:
        return f"port {port}"
    return format_addr(source) if port else host


def client_targets(endpoint: Endpoint, socktype: int = socket.SOCK_STREAM,
                   source: tuple[str, int] | None = None) -> list[tuple[int, Any, Any]]:
    """Where a client connects: ``(family, address, local)`` per resolved address, in the resolver's order.

    ``local`` is the address to bind before connecting - ``source`` (netcat's ``-s``/``-p``; host
    ``""`` is any address, port 0 lets the kernel pick) resolved in that address's family - or
    ``None``: the kernel picks at ``connect``. With a source, destination addresses of a family the
    source has no address in are left out (netcat-openbsd resolves ``-s`` in the destination's family).

    Raises:
        ResolveError: the destination or the source does not resolve, or they share no family.
        UsageError: a source for a Unix socket.
    """
    if endpoint.unix is not None:
        if source is not None:
            raise UsageError(f"a source address ({_describe_source(source)}) is for TCP and UDP, not the "
                             f"Unix socket {endpoint.unix}")
        return [(socket.AF_UNIX, endpoint.unix, None)]
    family = literal_family(endpoint.host)
    if family is not None and source is None:  # an address already: nothing to ask the resolver
        addr = (endpoint.host, endpoint.port) if family == socket.AF_INET else (endpoint.host, endpoint.port, 0, 0)
        return [(family, addr, None)]
    infos = _resolve(endpoint.host, endpoint.port, socktype, False)
    if source is None:
        return [(i[0], i[4], None) for i in infos]
    try:
        socket.getaddrinfo(source[0] or None, source[1], socket.AF_UNSPEC, socktype, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise translate_oserror(exc, f"resolving the source address {source[0]!r}") from exc
    local: dict[int, Any] = {}
    for family in dict.fromkeys(i[0] for i in infos):
        with contextlib.suppress(socket.gaierror):
            found = socket.getaddrinfo(source[0] or None, source[1], family, socktype, 0, socket.AI_PASSIVE)
            local[family] = found[0][4]
    out = [(i[0], i[4], local[i[0]]) for i in infos if i[0] in local]
    if not out:
        names = {int(socket.AF_INET): "IPv4", int(socket.AF_INET6): "IPv6"}
        kinds = " or ".join(sorted({names.get(i[0], str(i[0])) for i in infos}))
        raise ResolveError(f"the source address {_describe_source(source)} has no {kinds} address, and "
                           f"{endpoint.host!r} has only {kinds} ones: give a source of the same family")
    return out


def literal_family(host: str) -> int | None:
    """``AF_INET``/``AF_INET6`` when ``host`` is an address literal (``127.0.0.1``, ``::1``), else None.

    An address with a zone (``fe80::1%eth0``) is None: the resolver turns the zone into a scope id.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return int(family)
    return None


def close_traced(sock: socket.socket, tracer: Tracer | None, detail: str, peer: Any = None) -> None:
    """Close a socket that never became a transport (a failed bind or connect, a dial's loser), traced
    as every close is, so the trace never shows its fd number opened again without a close."""
    if tracer and sock.fileno() >= 0:
        tracer.emit("close", sock, peer=peer, detail=detail)
    sock.close()


def bind_source(sock: socket.socket, local: Any, tracer: Tracer | None = None) -> None:
    """Bind a client socket to ``local`` before ``connect`` (netcat's ``-s``/``-p``).

    A TCP socket given a port gets SO_REUSEADDR first: an earlier connection from that port may
    still sit in TIME_WAIT (netcat-openbsd sets it too). Not on UDP, where it would let two sockets
    share the port. The socket is closed when the bind fails.

    Raises:
        AddressInUse: the port is taken, or the address is not one of this host's (EADDRNOTAVAIL).
    """
    if local[1] and sock.type == socket.SOCK_STREAM:
        _setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1, "SO_REUSEADDR", tracer)
    try:
        sock.bind(local)
    except OSError as exc:
        if tracer:
            tracer.emit("bind", sock, detail=f"source address {format_addr(local)} failed: {exc.strerror}")
        close_traced(sock, tracer, f"bind failed: {errno.errorcode.get(exc.errno or 0, exc.strerror)} - "
                                   "this socket is closed")
        where = f"binding the source address {format_addr(local)}"
        if exc.errno == errno.EADDRNOTAVAIL:
            err = AddressInUse(f"{local[0]} is not an address of this host (cannot assign requested address "
                               f"while {where})")
            err.errno = exc.errno
            raise err from exc
        raise translate_oserror(exc, where) from exc
    if tracer:
        tracer.emit("bind", sock, detail=f"source address {format_addr(sock.getsockname())}, before connect()")


def connect_tcp(endpoint: Endpoint, *, timeout: float | None = 10.0, tracer: Tracer | None = None,
                nodelay: bool = True, source: tuple[str, int] | None = None) -> socket.socket:
    """A connected, *blocking* TCP (or Unix) socket: every resolved address, Happy Eyeballs style.

    The rules (order, ``timeout`` as the budget of the whole connect, the error naming every
    address tried) are :mod:`socklab.core.dial`'s, the same on every engine. ``source``: bind this
    ``(host, port)`` first, in each destination's family (see :func:`client_targets`).

    Raises:
        ConnectionRefused, ConnectTimeout, HostUnreachable, ResolveError, AddressInUse: one-line reasons.
    """
    from socklab.core.dial import connect_blocking  # (dial builds on this module)

    return connect_blocking(endpoint, timeout=timeout, tracer=tracer, nodelay=nodelay, source=source)


def server_ssl_context(cert: str, key: str | None = None, *, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS server context from PEM files (TLS 1.2 or newer).

    Args:
        client_ca: also require every client to present a certificate signed by this CA (PEM):
            mutual TLS, the handshake fails for anyone else.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key or None)
        if client_ca is not None:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        what = f"TLS certificate {cert!r}" + (f" or CA {client_ca!r}" if client_ca else "")
        raise UsageError(f"cannot load {what}: {exc}") from exc
    return ctx


def client_ssl_context(cafile: str | None = None, insecure: bool = False, *, cert: str | None = None,
                       key: str | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    """A TLS client context that verifies the server unless ``insecure``.

    Args:
        cert, key: present this certificate (PEM) when the server asks for one (mutual TLS).
        check_hostname: False to accept any certificate the CA signed, whatever name it is for
            (peers that are identified by their CA, not by a host name).
    """
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif not check_hostname:
        ctx.check_hostname = False  # verify_mode stays CERT_REQUIRED: the CA's signature still counts
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load TLS certificate {cert!r}: {exc}") from exc
    return ctx
