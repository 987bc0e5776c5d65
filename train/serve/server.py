"""The WebSocket server (aiohttp): the browser page and the socket on one port, every stream in one batch.

One asyncio loop does the networking; one worker thread runs the ``Batcher`` (featurizing, the compiled step,
endpoints), one tick at a time, so the loop keeps reading and writing while the model computes. Per
connection:

- a slot, or a refusal: ``{"error": ...}`` and close code 1013 (try again later) when all are taken;
- its audio goes to an inbox that the next tick takes; the batcher is woken only when a slot has enough audio
  for its next segment (or a stream joined, ended or has segments waiting);
- backpressure: the connection stops reading while more than ``buffer_seconds`` of its audio wait to be
  decoded, so a client sending faster than real time is slowed by TCP, not buffered without bound;
- its results go through its own queue and sender task: a client that reads slowly delays only itself, and
  one that stops reading (``MAX_PENDING_RESULTS`` waiting) is disconnected;
- a protocol error (``protocol.ProtocolError``), a message over the limit, or no message for
  ``idle_timeout`` seconds: ``{"error": ...}`` and a close of that connection only; a client gone mid-stream
  frees its slot at the next tick;
- the connection's handler alone reads and closes it: when the server ends a stream (its final after ``Done``,
  an error from the batcher, the drain) the pending read is cancelled first, so the close handshake completes.

SIGTERM (or SIGINT): stop listening, end every stream in flight as if it had sent ``Done`` (its finals are
sent), close them, return. Nothing a client sends names a file or is evaluated: the page and its worklet are
read once at start-up and are the only things served over HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import signal
import sys
from importlib import resources

import numpy as np
from aiohttp import WSMsgType, web

from ..corpora.audio import StreamingResampler
from ..workdir import say
from . import protocol
from .batcher import Batcher, SlotInput, TickResult

__all__ = ["MAX_PENDING_RESULTS", "Server", "serve"]

MAX_PENDING_RESULTS = 256  # results queued for a client that does not read them: then it is disconnected
TRY_AGAIN_LATER = 1013
GOING_AWAY = 1001
STATIC = {"/": ("index.html", "text/html"), "/capture-worklet.js": ("capture-worklet.js", "text/javascript")}


class _Stream:
    """One connection's side of a slot (touched only on the event loop)."""

    def __init__(self, stream_id: int, slot: int, ws: web.WebSocketResponse, transport):
        self.id, self.slot, self.ws, self.transport = stream_id, slot, ws, transport
        self.inbox: list[np.ndarray] = []
        self.received = 0  # 16 kHz samples taken from the client
        self.stepped = 0  # ... of which in decoded segments
        self.needed: int | None = 0  # samples the next segment needs (0: work is waiting)
        self.ended = False  # Done (or drain): no more audio
        self.end_sent = False  # the batcher was told
        self.resampler: StreamingResampler | None = None
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.room = asyncio.Event()  # set while the backlog is under the bound
        self.room.set()
        self.closing = False  # the server is closing it (final sent, error, drain)
        self.sender: asyncio.Task | None = None


class Server:
    """The server's state and handlers. ``serve`` runs it; tests may run ``run`` in their own loop.

    Args:
        batcher: its slots are the streams served at once.
        host, port: where to listen (port 0: any free port; ``port`` holds the one taken once started).
        buffer_seconds: audio a stream may have waiting to be decoded before its connection stops reading.
        idle_timeout: seconds without a message after which a stream is closed with an error.
        max_message_bytes: the largest message taken (aiohttp drops a connection at 4 x this on its own).
    """

    def __init__(
        self,
        batcher: Batcher,
        *,
        host: str = "127.0.0.1",
        port: int = 6006,
        buffer_seconds: float = 2.0,
        idle_timeout: float = 60.0,
        max_message_bytes: int = protocol.MAX_MESSAGE_BYTES,
    ):
        self.batcher, self.host, self.port = batcher, host, port
        self.max_backlog = int(buffer_seconds * protocol.SAMPLE_RATE)
        self.idle_timeout, self.max_message_bytes = idle_timeout, max_message_bytes
        self.slots: list[_Stream | None] = [None] * batcher.num_slots
        self.streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batcher")
        self._pages = {
            path: (resources.files(__package__).joinpath("static").joinpath(name).read_bytes(), kind)
            for path, (name, kind) in STATIC.items()
        }
        self._wake: asyncio.Event | None = None
        self.draining = False
        self.served = 0

    # ---------------------------------------------------------------------------------------------------
    # HTTP and connections

    def app(self) -> web.Application:
        app = web.Application()
        for path in STATIC:
            app.router.add_get(path, self._http)
        return app

    async def _http(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body, kind = self._pages[request.path]
        return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * self.max_message_bytes, compress=False)
        await ws.prepare(request)
        slot = next((b for b, s in enumerate(self.slots) if s is None), None)
        if slot is None or self.draining:
            reason = (
                "the server is shutting down"
                if self.draining
                else f"all {len(self.slots)} streams are busy; try again later"
            )
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(protocol.error_message(reason))
                await ws.close(code=TRY_AGAIN_LATER, message=reason.encode()[:120])
            return ws
        stream = _Stream(next(self._ids), slot, ws, request.transport)
        self.slots[slot], self.streams[stream.id] = stream, stream
        self.served += 1
        self._poke()
        sender = stream.sender = asyncio.create_task(self._send(stream))
        try:
            await self._receive(stream)
        except protocol.ProtocolError as error:
            self._fail(stream, str(error), error.close_code)
        except (ConnectionError, RuntimeError):
            pass
        if not (stream.ended or stream.closing):  # the client left mid-stream
            self._release(stream)
            sender.cancel()
        try:  # the results queued (after Done: up to the final) go out, then the close handshake
            code, reason = await sender
            await ws.close(code=code, message=reason.encode()[:120])
        except (asyncio.CancelledError, ConnectionError, RuntimeError):
            pass
        finally:
            self._release(stream)
        return ws

    async def _receive(self, stream: _Stream) -> None:
        """Reads the client's messages until ``Done``, an error, the client leaving, or the server closing the
        stream (its sender done: the close handshake must not race a pending read)."""
        ws = stream.ws
        while not stream.ended:
            while not stream.room.is_set() and not stream.closing:
                await stream.room.wait()  # backpressure: not reading lets TCP slow the client down
            if stream.sender.done():
                return
            receive = asyncio.ensure_future(ws.receive(timeout=self.idle_timeout))
            await asyncio.wait((receive, stream.sender), return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():  # the server is closing the stream
                receive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receive
                return
            try:
                message = receive.result()
            except TimeoutError:
                raise protocol.ProtocolError(
                    f"idle: expected a message at least every {self.idle_timeout:g} s, got none"
                ) from None
            if stream.ended or stream.closing:  # drained or failed while we waited
                return
            if message.type == WSMsgType.BINARY:
                self._push(stream, protocol.samples_of(message.data, self.max_message_bytes))
            elif message.type == WSMsgType.TEXT:
                first = stream.received == 0 and stream.resampler is None
                rate = protocol.parse_text(message.data, first=first, max_bytes=self.max_message_bytes)
                if rate is None:
                    self._end(stream)
                elif rate != protocol.SAMPLE_RATE:
                    stream.resampler = StreamingResampler(rate, protocol.SAMPLE_RATE)
            else:  # CLOSE, CLOSING, CLOSED: the client left; ERROR: aiohttp closed it (a message far over the limit)
                return

    def _push(self, stream: _Stream, samples: np.ndarray) -> None:
        if stream.resampler is not None:
            samples = stream.resampler.push(samples)
        if samples.size:
            stream.inbox.append(samples)
            stream.received += samples.size
            self._update_room(stream)
            if stream.needed is not None and stream.received >= stream.needed:
                self._poke()

    def _end(self, stream: _Stream) -> None:
        if not stream.ended:
            if stream.resampler is not None:
                self._push(stream, stream.resampler.finish())
            stream.ended = True
            self._poke()

    async def _send(self, stream: _Stream) -> tuple[int, str]:
        """Sends the stream's results in order until ("close", code, reason), which it returns."""
        while True:
            item = await stream.outbox.get()
            if item[0] == "close":
                return item[1], item[2]
            await stream.ws.send_str(item[1])

    def _queue(self, stream: _Stream, text: str) -> None:
        if stream.outbox.qsize() >= MAX_PENDING_RESULTS:
            say(f"stream {stream.id}: {MAX_PENDING_RESULTS} results not read by the client; disconnecting it")
            self._release(stream)
            stream.closing = True
            if stream.transport is not None:
                stream.transport.abort()
            stream.room.set()
            return
        stream.outbox.put_nowait(("text", text))

    def _close(self, stream: _Stream, code: int, reason: str = "") -> None:
        stream.closing = True
        stream.room.set()
        stream.outbox.put_nowait(("close", code, reason))

    def _fail(self, stream: _Stream, message: str, code: int) -> None:
        """``{"error": message}``, then a close with ``code``; the slot is freed at once."""
        if stream.closing:
            return
        say(f"stream {stream.id}: error: {message}")
        self._release(stream)
        stream.outbox.put_nowait(("text", protocol.error_message(message)))
        self._close(stream, code, message)

    def _release(self, stream: _Stream) -> None:
        """Frees the stream's slot (the next tick resets it) and forgets the stream."""
        if self.slots[stream.slot] is stream:
            self.slots[stream.slot] = None
        self.streams.pop(stream.id, None)
        self._poke()

    def _update_room(self, stream: _Stream) -> None:
        if stream.received - stream.stepped > self.max_backlog:
            stream.room.clear()
        else:
            stream.room.set()

    # ---------------------------------------------------------------------------------------------------
    # The batching loop

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _inputs(self) -> list[SlotInput]:
        """Every slot's news since the last tick (moved out of the inboxes)."""
        inputs = []
        for stream in self.slots:
            if stream is None:
                inputs.append(SlotInput())
                continue
            samples = np.concatenate(stream.inbox) if stream.inbox else None
            stream.inbox = []
            end = stream.ended and not stream.end_sent
            stream.end_sent |= end
            inputs.append(SlotInput(stream.id, samples, end))
        return inputs

    def _deliver(self, result: TickResult, owners: list[int | None]) -> None:
        for stream_id, reason in result.failed:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._fail(stream, reason, protocol.POLICY)
        for stream_id, text in result.messages:
            stream = self.streams.get(stream_id)
            if stream is not None and not stream.closing:
                self._queue(stream, text)
        for b, report in enumerate(result.slots):
            stream = self.slots[b]
            if report is None or stream is None or stream.id != owners[b]:
                continue  # the slot changed hands during the tick: the next tick sees it
            stream.stepped, stream.needed = report.stepped_samples, report.samples_needed
            self._update_room(stream)
            if report.done:  # its last result is queued: close it normally, free the slot
                self._release(stream)
                self._close(stream, 1000 if not self.draining else GOING_AWAY)

    def _has_work(self) -> bool:
        """Whether a tick would do something: a stream ended, or has audio for its next segment (or one
        waiting: ``needed`` 0)."""
        return any(
            s is not None
            and ((s.ended and not s.end_sent) or (s.needed is not None and s.received >= s.needed))
            for s in self.slots
        )

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        owners_before: list[int | None] = [None] * len(self.slots)
        while True:
            owners = [s.id if s is not None else None for s in self.slots]
            if not (owners != owners_before or self._has_work()):
                self._wake.clear()
                await self._wake.wait()
                continue
            inputs = self._inputs()
            owners_before = [i.owner for i in inputs]
            try:
                result = await loop.run_in_executor(self._executor, self.batcher.tick, inputs)
            except Exception as error:  # a bug must not hang every stream: fail those of this tick, go on
                say(f"error: a batch step failed ({type(error).__name__}: {error}); its streams are closed")
                for stream in [s for s in self.slots if s is not None and s.id in owners_before]:
                    self._fail(stream, "the server failed to decode this stream", protocol.POLICY)
                continue
            self._deliver(result, owners_before)

    # ---------------------------------------------------------------------------------------------------
    # Running

    async def run(self, stop: asyncio.Event, ready=None) -> None:
        """Serves until ``stop`` is set, then drains; ``ready(url)`` is called once listening."""
        self._wake = asyncio.Event()
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        batching = asyncio.create_task(self._batch_loop())
        if ready is not None:
            ready(f"ws://{self.host}:{self.port}")
        try:
            await stop.wait()
            await self._drain(site)
        finally:
            batching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batching
            await runner.cleanup()
            self._executor.shutdown(wait=True)

    async def _drain(self, site: web.TCPSite, timeout: float = 60.0) -> None:
        """Stops listening, ends every stream in flight as if it had sent Done, waits for their finals."""
        self.draining = True
        await site.stop()
        in_flight = [s for s in self.slots if s is not None]
        say(f"draining: {len(in_flight)} stream(s) in flight get their finals")
        for stream in in_flight:
            self._end(stream)
            stream.room.set()
        senders = [s.sender for s in in_flight if s.sender is not None]
        if senders:  # each ends once its final went out and its close handshake is done
            await asyncio.wait(senders, timeout=timeout)


def serve(batcher: Batcher, *, host: str = "127.0.0.1", port: int = 6006, **options) -> dict:
    """Compiles, listens, prints ``listening on ws://HOST:PORT``, serves until SIGTERM or SIGINT, drains."""
    batcher.warm_up()
    server = Server(batcher, host=host, port=port, **options)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def ready(url):
            print(f"listening on {url}", flush=True)
            say(f"page: http://{server.host}:{server.port}/ ({len(server.slots)} streams at once)")

        await server.run(stop, ready)

    try:
        asyncio.run(main())
    except OSError as error:
        raise ValueError(f"host, port: cannot listen on {host}:{port} ({error.strerror or error})") from None
    say(f"stopped after serving {server.served} stream(s)")
    sys.stdout.flush()
    return {"served": server.served}
