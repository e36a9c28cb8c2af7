"""A TCP relay that delays every byte by a fixed time each way: latency without netem.

``python tests/relay.py --listen HOST:PORT --upstream HOST:PORT --delay SECONDS``

Used by the multi-host test on kernels without ``sch_netem``: a SuperNode connects to
the relay in its own namespace, the relay to the SuperLink. TLS stays end to end (the
relay sees ciphertext only). Order is kept: each direction is one queue of chunks, each
written when its delay has passed.
"""

from __future__ import annotations

import argparse
import asyncio


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    await sender


async def _serve(listen: str, upstream: str, delay: float) -> None:
    host, port = listen.rsplit(":", 1)
    up_host, up_port = upstream.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(up_host, int(up_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay", type=float, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.listen, args.upstream, args.delay))


if __name__ == "__main__":
    main()
