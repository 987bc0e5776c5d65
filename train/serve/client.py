"""A streaming client of the server (``python -m train client``), also the load generator of
benchmarks/serve_load.py: audio goes out as float32 16 kHz binary messages, as fast as the connection takes
them or at real-time pace, then ``Done``; every result that comes back is kept with its arrival time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable

import aiohttp
import numpy as np

from .protocol import MAX_MESSAGE_BYTES, SAMPLE_RATE

__all__ = ["StreamOutcome", "stream_audio", "stream_files"]


@dataclasses.dataclass
class StreamOutcome:
    """One stream's exchange: ``results`` (arrival time, message) in order, ``sent`` (time, samples sent so
    far) after each binary message, ``error`` the server's error (or a refusal), ``close_code``."""

    results: list[tuple[float, dict]] = dataclasses.field(default_factory=list)
    sent: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    error: str | None = None
    close_code: int | None = None

    @property
    def transcript(self) -> str:
        """The concatenation of the final segments' texts."""
        return "".join(m["text"] for _, m in self.results if m.get("final"))


async def stream_audio(
    url: str,
    audio: np.ndarray,
    *,
    realtime: bool = False,
    packet_seconds: float = 0.1,
    on_result: Callable[[dict], None] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> StreamOutcome:
    """Streams ``audio`` (N,) float32 at 16 kHz to the server at ``url`` in packets of ``packet_seconds``,
    then ``Done``, and collects the results until the server closes the connection."""
    outcome = StreamOutcome()
    packet = max(1, int(packet_seconds * SAMPLE_RATE))
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.ws_connect(url, max_msg_size=4 * MAX_MESSAGE_BYTES, compress=0) as ws:

            async def send():
                started = time.perf_counter()
                for begin in range(0, audio.size, packet):
                    if realtime:  # packet k goes once its last sample would have been spoken
                        delay = started + min(begin + packet, audio.size) / SAMPLE_RATE - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await ws.send_bytes(audio[begin : begin + packet].astype("<f4").tobytes())
                    outcome.sent.append((time.perf_counter(), min(begin + packet, audio.size)))
                await ws.send_str("Done")

            sender = asyncio.create_task(send())
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                blob = json.loads(message.data)
                if "error" in blob:
                    outcome.error = blob["error"]
                    continue
                outcome.results.append((time.perf_counter(), blob))
                if on_result is not None:
                    on_result(blob)
            outcome.close_code = ws.close_code
            if not sender.done():
                sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, ConnectionError, aiohttp.ClientError):
                pass
    finally:
        if own:
            await session.close()
    return outcome


async def stream_files(
    url: str, audios: dict[str, np.ndarray], *, realtime: bool = False, out=None
) -> dict[str, StreamOutcome]:
    """Streams every audio at once (one connection each), printing partial and final results as they come."""

    def printer(name: str):
        shown = {"partial": ""}

        def on_result(message: dict) -> None:
            if message["final"]:
                shown["partial"] = ""
                print(
                    f"{name} [segment {message['segment']} final] {message['text'].strip()}",
                    file=out,
                    flush=True,
                )
            elif message["text"] != shown["partial"]:
                shown["partial"] = message["text"]
                print(
                    f"{name} [segment {message['segment']}] {message['text'].strip()}", file=out, flush=True
                )

        return on_result

    async with aiohttp.ClientSession() as session:
        tasks = {
            name: stream_audio(url, audio, realtime=realtime, on_result=printer(name), session=session)
            for name, audio in audios.items()
        }
        outcomes = await asyncio.gather(*tasks.values())
    return dict(zip(tasks, outcomes))
