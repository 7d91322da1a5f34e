"""Reference for `socklab bench ws`: a picows WebSocket echo on uvloop (the fastest Python peer known).

Why this exists: picows parses frames in Cython and hands the payload over as a memoryview; it is
the stretch bar (issue 19: socklab >= 0.8x picows). Frames are echoed as they came (a message
is one frame here: the generator sends FIN frames).

Usage: ``python servers/picows_ws.py [--port 0]``
"""

from __future__ import annotations

import argparse

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        else:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())


async def main(host: str, port: int) -> None:
    def factory(_request: WSUpgradeRequest) -> Echo:
        return Echo()

    server = await ws_create_server(factory, host, port, max_frame_size=1 << 20)
    real = server.sockets[0].getsockname()[1]
    print(f"reference picows listening on tcp://{host}:{real}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    try:
        uvloop.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
