"""Messages between the trusted grading process and the worker.

A message is an 8-byte big-endian length followed by a payload written with `torch.save`. Payloads are read
back with `torch.load(weights_only=True)`, which only rebuilds tensors, numbers, strings, None and
lists/tuples/dicts of those: never arbitrary objects, so a hostile worker cannot run code in the grader by
what it sends back. This module is imported by both sides and needs only the standard library and torch.
"""

from __future__ import annotations

import io
import os
import select
import struct
import time

import torch

HEADER = struct.Struct("!Q")
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class ChannelClosed(Exception):
    """The other side closed the pipe (for the trusted side: the worker died)."""


class ChannelTimeout(Exception):
    """No complete message arrived before the deadline."""


class BadMessage(Exception):
    """A message that is too large or cannot be decoded safely."""


def encode(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def decode(payload: bytes):
    try:
        return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - anything that is not a plain, safe payload
        raise BadMessage(f"undecodable message ({type(exc).__name__})") from None


def send(fd: int, obj, deadline: float | None = None) -> None:
    """Write one message to `fd`; with a `deadline` (a time.monotonic() value) the fd must be non-blocking, and
    a reader that does not drain the pipe in time raises ChannelTimeout instead of blocking the writer."""
    payload = encode(obj)
    _write_all(fd, HEADER.pack(len(payload)) + payload, deadline)


def receive(fd: int, deadline: float | None = None, max_bytes: int = MAX_MESSAGE_BYTES):
    """Read one message from `fd`; `deadline` is a time.monotonic() value, None waits forever."""
    (length,) = HEADER.unpack(_read_exactly(fd, HEADER.size, deadline))
    if length > max_bytes:
        raise BadMessage(f"message of {length} bytes exceeds the {max_bytes} byte limit")
    return decode(_read_exactly(fd, length, deadline))


def _write_all(fd: int, data: bytes, deadline: float | None) -> None:
    view = memoryview(data)
    while view:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise ChannelTimeout()
            _, ready, _ = select.select([], [fd], [], wait)
            if not ready:
                raise ChannelTimeout()
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue  # the pipe filled up again: wait for room
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None
        view = view[written:]


def _read_exactly(fd: int, count: int, deadline: float | None) -> bytes:
    chunks = []
    remaining = count
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise ChannelTimeout()
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                raise ChannelTimeout()
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise ChannelClosed("end of stream")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
