"""An attempt's output as numbered LogChunks, spooled to a file so that any chunk can be sent again.

Memory stays bounded whatever the job prints: the encoded chunks live in the spool file and only
their offsets in memory (8 bytes a chunk). A chunk is encoded once, so a resent chunk is the same
bytes as the first copy. Each stream is decoded as UTF-8 on its own (a character split across two
reads is kept whole for the next chunk; invalid bytes become U+FFFD), and chunks are numbered in
the order the output came over both streams.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable
from pathlib import Path

from ...protocol.mqtt import LOG_CHUNK_CHARS, LogChunk, encode
from ..runtime.base import Stream

__all__ = ["LogSpool"]

STREAMS: tuple[Stream, ...] = ("stdout", "stderr")


class LogSpool:
    """``feed`` output, read chunk ``seq`` back with ``chunk``; ``close`` at the end of the attempt."""

    def __init__(
        self,
        path: Path,
        *,
        node: str,
        job: str,
        attempt: int,
        clock: Callable[[], float],
        chunk_chars: int = LOG_CHUNK_CHARS,
    ) -> None:
        self.path = path
        self._node, self._job, self._attempt = node, job, attempt
        self._clock = clock
        self._chunk_chars = chunk_chars
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self._offsets: list[int] = [0]  # chunk n is bytes [offsets[n], offsets[n+1])
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in STREAMS}
        self.closed = False

    @property
    def count(self) -> int:
        """How many chunks there are (numbered 0..count-1)."""
        return len(self._offsets) - 1

    def feed(self, stream: Stream, data: bytes) -> None:
        self._add(stream, self._decoders[stream].decode(data))

    def close(self) -> None:
        """Flush what the decoders hold back (a cut-off character becomes U+FFFD)."""
        if self.closed:
            return
        for stream in STREAMS:
            self._add(stream, self._decoders[stream].decode(b"", final=True))
        self.closed = True

    def release(self) -> None:
        """Drop the spool file (after the attempt's retention): chunks can no longer be resent."""
        self.close()
        os.close(self._fd)
        self.path.unlink(missing_ok=True)
        self._offsets = [0]

    def chunk(self, seq: int) -> bytes | None:
        """The encoded LogChunk ``seq``; None if there is no such chunk (or no longer)."""
        if not 0 <= seq < self.count:
            return None
        start, end = self._offsets[seq], self._offsets[seq + 1]
        return os.pread(self._fd, end - start, start)

    def _add(self, stream: Stream, text: str) -> None:
        for i in range(0, len(text), self._chunk_chars):
            payload = encode(
                LogChunk(
                    node=self._node,
                    job=self._job,
                    attempt=self._attempt,
                    seq=self.count,
                    stream=stream,
                    data=text[i : i + self._chunk_chars],
                    ts=round(self._clock(), 3),
                )
            )
            os.write(self._fd, payload)
            self._offsets.append(self._offsets[-1] + len(payload))
