"""Hostile inputs, made on the spot and small on disk, for the tests and the server
benchmark: decompression bombs and slow clients."""
from __future__ import annotations

import asyncio
import struct
import zlib


def png_bomb(width, height, pixels=True):
    """A valid PNG of width x height black pixels. With pixels, the real compressed rows
    (zlib shrinks zeros about 1000x: 12000x12000 is a 0.4 MB file that decodes to 432 MB);
    without, only the header claims the size (a few dozen bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(bytes((1 + 3 * width) * height), 9) if pixels else zlib.compress(b"")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def disguised_bomb(width=7100, height=7100):
    """A lossless WebP of width x height black pixels (7100x7100: 50.4 megapixels, just over
    the server's limit, in 2 KB) followed by Photo CD's signature at byte 2048: Pillow's
    PCD plugin, which checks no first bytes, would call it a 768x512 Photo CD image, while
    OpenCV decodes the WebP (151 MB)."""
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "WEBP", lossless=True)
    webp = buffer.getvalue()
    if len(webp) > 2048:
        raise ValueError(f"a {width}x{height} WebP takes {len(webp)} bytes: too many to put the signature after it")
    return webp + bytes(2048 - len(webp)) + b"PCD_" + bytes(1600)


async def slow_client(host, port, until, byte_seconds=0.5):
    """One connection that sends a request's headers a byte every `byte_seconds` until the
    server closes it (then it connects again) or the loop time passes `until`. Returns how
    many times the server closed it."""
    request = f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1000000\r\n\r\n".encode()
    loop, closed = asyncio.get_running_loop(), 0
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:  # refused (the connection limit): try again shortly
            await asyncio.sleep(byte_seconds)
            continue
        try:
            for k in range(len(request)):
                if loop.time() >= until:
                    break
                writer.write(request[k:k + 1])
                await writer.drain()
                await asyncio.sleep(byte_seconds)
                if reader.at_eof():
                    closed += 1
                    break
        except (ConnectionError, OSError):
            closed += 1
        finally:
            writer.close()
    return closed
