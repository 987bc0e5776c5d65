"""Dynamic batching of live streams: a fixed number of slots, one compiled step per segment for all of them.

The ``Batcher`` is synchronous and owns every piece of stream state (the server calls ``tick`` from one
worker thread, so nothing here is shared): per slot, the stream that occupies it, its audio turned into
log-mel frames as samples arrive (``streamformer.features.LiveLogMel``, one compiled call for all slots), its
frames cut into segment chunks (``SegmentLayout.feeder``, the library's chunk feeder), and the backend's
state of all slots. A tick takes each slot's new audio and end flag and runs at most one step, with the next
chunk of every slot that has one (the others get length 0 and stay as they were): a stream that sent audio
faster than real time waits its turn one segment per step and never holds up the others.

Streams join and leave by changing a slot's owner: the slot is reset (``backend.reset``), nothing is
recompiled. After every step, each stepped stream gets a result message; the library's endpoint rules
(``streamformer.decoding.endpoint.rules_fired``) make a segment final and reset that stream's search (the
transcriber goes on), as does a hypothesis that has filled 3/4 of its token slots; the stream's last chunk
after ``Done`` makes its last segment final.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from streamformer.decoding.endpoint import EndpointConfig, rules_fired
from streamformer.decoding.timestamps import word_times
from streamformer.features import LiveLogMel
from streamformer.layout import SegmentLayout

from .backends import Backend
from .protocol import SAMPLE_RATE, result_message

__all__ = ["Batcher", "SlotInput", "SlotReport", "TickResult"]

HOP = 160  # samples per feature frame at 16 kHz
SHERPA_RULES = EndpointConfig()  # the library's defaults: sherpa's three rules


@dataclasses.dataclass
class SlotInput:
    """What a tick learns about one slot: ``owner`` the id of the stream in it (None: free), its new 16 kHz
    samples, and whether its audio has ended (``Done``)."""

    owner: int | None = None
    samples: np.ndarray | None = None
    end: bool = False


@dataclasses.dataclass(frozen=True)
class SlotReport:
    """A slot after a tick: ``stepped_samples`` of its audio are in decoded segments; ``samples_needed`` is the
    audio it needs (counted from its start) before its next segment can go, 0 when one is already waiting,
    None once its stream has ended and all its segments went; ``done`` once its last result is out."""

    stepped_samples: int
    samples_needed: int | None
    done: bool


@dataclasses.dataclass(frozen=True)
class TickResult:
    """``messages``: (stream id, JSON text) in order; ``failed``: (stream id, reason) of streams dropped;
    ``slots``: a SlotReport per slot (None for a free slot); ``stepped``: whether a step ran."""

    messages: list[tuple[int, str]]
    failed: list[tuple[int, str]]
    slots: list[SlotReport | None]
    stepped: bool


class _Slot:
    def __init__(self, owner: int | None, layout: SegmentLayout, num_features: int):
        self.owner = owner
        self.feeder = layout.feeder(1, num_features)
        self.chunks: collections.deque = collections.deque()
        self.ended = self.done = self.spoke = False
        self.segment = 0  # results of earlier segments were final
        self.offset = 0.0  # seconds of the stream before the current segment
        self.stepped = 0  # chunks decoded


class Batcher:
    """Slots of live streams over one backend (its batch size is the number of slots).

    Args:
        backend: a ``CheckpointBackend`` or ``ExportedBackend``.
        endpoint: the endpoint rules (default: sherpa's); None: a segment ends only at ``Done``.
        block_frames: feature frames per stream in one featurizer call (default 2 S + R).
    """

    def __init__(
        self, backend: Backend, *, endpoint: EndpointConfig | None = SHERPA_RULES, block_frames=None
    ):
        self.backend, self.endpoint = backend, endpoint
        S, R = backend.segment_length, backend.right_context_length
        self.layout = SegmentLayout(S, R)
        self.features = LiveLogMel(backend.batch_size, block_frames or 2 * S + R)
        self.state = backend.init()
        self._slots = [_Slot(None, self.layout, backend.num_features) for _ in range(backend.batch_size)]

    @property
    def num_slots(self) -> int:
        return self.backend.batch_size

    def warm_up(self) -> None:
        """Compiles everything a tick runs (featurizer, step, results, resets), leaving the state fresh."""
        B, S, R = self.num_slots, self.backend.segment_length, self.backend.right_context_length
        self.features.push(0, np.zeros(SAMPLE_RATE // 2, np.float32))
        self.features.finish(0)
        self.features.frames()
        self.features.reset(0)
        chunks = np.zeros((B, S + R, self.backend.num_features), np.float32)
        state = self.backend.step(self.state, chunks, np.full(B, S + R, np.int32))
        self.backend.best(state)
        self.backend.decoded_frames(state)
        self.backend.reset(state, np.ones(B, bool), search_only=True)
        self.state = self.backend.reset(state, np.ones(B, bool), search_only=False)

    def tick(self, inputs: list[SlotInput]) -> TickResult:
        """Takes every slot's news (``inputs``: one SlotInput per slot) and runs at most one step."""
        if len(inputs) != self.num_slots:
            raise ValueError(f"inputs: expected one SlotInput per slot ({self.num_slots}), got {len(inputs)}")
        self._take_owners(inputs)
        self._take_audio(inputs)
        messages, failed, stepped = self._step()
        reports = [self._report(b) for b in range(self.num_slots)]
        return TickResult(messages, failed, reports, stepped)

    def _take_owners(self, inputs: list[SlotInput]) -> None:
        joined = np.zeros(self.num_slots, bool)
        for b, news in enumerate(inputs):
            if news.owner != self._slots[b].owner:  # a stream left, joined, or both: the slot starts afresh
                self._slots[b] = _Slot(news.owner, self.layout, self.backend.num_features)
                self.features.reset(b)
                joined[b] = news.owner is not None
        if joined.any():
            self.state = self.backend.reset(self.state, joined, search_only=False)

    def _take_audio(self, inputs: list[SlotInput]) -> None:
        for b, news in enumerate(inputs):
            slot = self._slots[b]
            if slot.owner is None or slot.ended:
                continue
            if news.samples is not None and news.samples.size:
                self.features.push(b, news.samples)
            if news.end:
                self.features.finish(b)
        for b, frames in enumerate(self.features.frames()):
            slot = self._slots[b]
            if frames.size:
                slot.chunks.extend(slot.feeder.feed(self.backend.normalize(frames)[None]))
            if inputs[b].end and slot.owner is not None and not slot.ended:
                slot.ended = True  # all its frames are in: the feeder's last chunks follow
                slot.chunks.extend(slot.feeder.finish())

    def _step(self) -> tuple[list[tuple[int, str]], list[tuple[int, str]], bool]:
        stepping = [b for b, slot in enumerate(self._slots) if slot.chunks]
        if not stepping:
            return [], [], False
        B, S, R = self.num_slots, self.backend.segment_length, self.backend.right_context_length
        chunks = np.zeros((B, S + R, self.backend.num_features), np.float32)
        lengths = np.zeros(B, np.int32)
        for b in stepping:
            chunk, chunk_lengths = self._slots[b].chunks.popleft()
            chunks[b], lengths[b] = chunk[0], chunk_lengths[0]
            self._slots[b].stepped += 1
        self.state = self.backend.step(self.state, chunks, lengths)
        failed = []
        overflowed = self.backend.overflowed(self.state)
        if overflowed.any():  # cannot happen within the endpoint rules' 20 s utterances; never crash on it
            for b in np.flatnonzero(overflowed):
                failed.append((self._slots[b].owner, "the utterance emitted more tokens than a result holds"))
                self._slots[b] = _Slot(None, self.layout, self.backend.num_features)
                self.features.reset(int(b))
            self.state = self.backend.reset(self.state, overflowed, search_only=False)
            stepping = [b for b in stepping if not overflowed[b]]
        best = self.backend.best(self.state)
        frames = self.backend.decoded_frames(self.state)
        counts = np.array([len(tokens) for tokens, _ in best])
        # A segment whose hypothesis has filled 3/4 of its token slots ends too: a step emits far fewer.
        fired = counts >= self.backend.max_tokens * 3 // 4
        if self.endpoint is not None:
            period = self.endpoint.frame_period or self.backend.frame_period
            last = np.array([stamps[-1] if stamps else 0 for _, stamps in best])
            fired |= rules_fired(self.endpoint, frames, counts, last, period)
        messages, search_reset = [], np.zeros(B, bool)
        for b in stepping:
            slot = self._slots[b]
            last_chunk = slot.ended and not slot.chunks
            final = bool(last_chunk or fired[b])
            messages.append((slot.owner, self._message(slot, *best[b], final)))
            if final:
                slot.segment += 1
                slot.offset += int(frames[b]) * self.backend.frame_period
                search_reset[b] = not last_chunk
            slot.done = last_chunk
        if search_reset.any():
            self.state = self.backend.reset(self.state, search_reset, search_only=True)
        return messages, failed, True

    def _message(self, slot: _Slot, tokens: list[int], stamps: list[int], final: bool) -> str:
        text = self.backend.text(tokens)
        if text and slot.spoke:  # a later segment: the finals' concatenation is the transcript
            text = " " + text
        words = word_times(self.backend.pieces(tokens), stamps, self.backend.frame_period, offset=slot.offset)
        if final and text:
            slot.spoke = True
        return result_message(text, final, slot.segment, words)

    def _report(self, b: int) -> SlotReport | None:
        slot = self._slots[b]
        if slot.owner is None:
            return None
        stepped = slot.stepped * self.backend.segment_length * HOP
        if slot.chunks:
            return SlotReport(stepped, 0, False)
        if slot.ended:
            return SlotReport(stepped, None, slot.done)
        frames = self.features.frames_done(b) + slot.feeder.frames_to_next_chunk
        return SlotReport(stepped, self.features.samples_for_frames(frames), False)
