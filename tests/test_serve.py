"""The live-stream server (train/serve/, ``python -m train serve`` and ``client``): served transcripts equal
``python -m train transcribe``'s for concurrent clients that start at different times, the exported artifact
serves the same, dynamic batching (joins, leaves, backpressure), the faults (a client gone mid-stream, bad
messages, too many streams, SIGTERM drain), and the protocol's resampling.

One micro model, initialised (not trained: its blank bias raised so that it emits some tokens) into a run folder
with a checkpoint, serves every test; one server per configuration for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile

from streamformer.features import GlobalStats
from streamformer.text import train_bpe
from streamformer.train import config as config_lib
from streamformer.train.commands.export import export_run
from streamformer.train.commands.transcribe import read_audio, transcribe_files
from streamformer.train.corpora import synth
from streamformer.train.corpora.prepare import log_mel_features
from streamformer.train.serve.backends import CheckpointBackend, ExportedBackend
from streamformer.train.serve.batcher import Batcher
from streamformer.train.serve.client import stream_audio
from streamformer.train.serve.server import Server
from streamformer.train.workdir import Run, write_initialised_run
from tests.test_train import micro_config

ROOT = Path(__file__).resolve().parents[1]
SLOTS = 3


def _initialised_run(workdir: Path, audios: list[np.ndarray]) -> config_lib.Config:
    """A run folder as ``fit`` leaves it (config, tokenizer, statistics, a checkpoint), with initial weights
    (the joiner doubled and the blank's bias raised: the model emits a few tokens, not ten a frame)."""
    config = micro_config()
    texts = [synth.synthesize(synth.SynthConfig(), "train", i).text for i in range(40)]
    tokenizer = train_bpe(texts, workdir / "tokenizer.model", config.data.vocab_size)
    stacked = np.concatenate(log_mel_features(audios))
    stats = GlobalStats.from_lists(stacked.mean(0), 1 / (stacked.std(0) + 1e-3))

    def emitting(params):
        linear = params["joiner"]["linear"]
        linear = {"kernel": linear["kernel"] * 2.0, "bias": linear["bias"].at[-1].add(3.0)}
        return {**params, "joiner": {**params["joiner"], "linear": linear}}

    write_initialised_run(workdir, config, tokenizer, stats, edit_params=emitting)
    return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """(workdir, config, wav paths): four synthesized test utterances and one of 8 kHz stereo."""
    folder = tmp_path_factory.mktemp("serve")
    utterances = [synth.synthesize(synth.SynthConfig(), "test", i) for i in range(4)]
    wavs = []
    for i, u in enumerate(utterances):
        wavs.append(folder / f"u{i}.wav")
        soundfile.write(wavs[-1], u.audio, 16000)
    workdir = folder / "run"
    workdir.mkdir()
    config = _initialised_run(workdir, [u.audio for u in utterances])
    return workdir, config, wavs


@pytest.fixture(scope="module")
def loaded(run_dir):
    workdir, config, _ = run_dir
    run = Run(config, workdir)
    run.load_frontend()
    model, variables, _ = run.restore_variables()
    return run, model, variables


@pytest.fixture(scope="module")
def expected(run_dir, loaded):
    """``python -m train transcribe``'s transcripts (greedy) of the test files."""
    _, _, wavs = run_dir
    run, model, variables = loaded
    transcripts, errors = transcribe_files(run, model, variables, [str(w) for w in wavs])
    assert not errors
    assert sum(len(t) for t in transcripts.values()) > 10  # the model says something
    return transcripts


class ServerThread:
    """A Server in its own thread and loop (as ``serve`` runs it, without the signal handlers)."""

    def __init__(self, batcher: Batcher, **options):
        self.server = Server(batcher, host="127.0.0.1", port=0, **options)
        self.url = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self):
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()

        def ready(url):
            self.url = url + "/"
            self._ready.set()

        await self.server.run(self.stop, ready)

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(120)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self._thread.join(60)

    def busy_slots(self) -> int:
        return sum(s is not None for s in self.server.slots)


@pytest.fixture(scope="module")
def checkpoint_server(loaded):
    run, model, variables = loaded
    backend = CheckpointBackend(model, variables, run.tokenizer, run.stats, batch_size=SLOTS)
    batcher = Batcher(backend)
    batcher.warm_up()
    with ServerThread(batcher, buffer_seconds=1.0) as server:
        yield server


def _run(coroutine):
    return asyncio.run(coroutine)


async def _staggered(url, audios, delays, **kwargs):
    async def one(audio, delay):
        await asyncio.sleep(delay)
        return await stream_audio(url, audio, **kwargs)

    return await asyncio.gather(*(one(a, d) for a, d in zip(audios, delays)))


def test_concurrent_streams_equal_transcribe(run_dir, expected, checkpoint_server):
    _, _, wavs = run_dir
    audios = [read_audio(w)[0] for w in wavs[:SLOTS]]
    outcomes = _run(
        _staggered(checkpoint_server.url, audios, [0.0, 0.15, 0.4], realtime=True, packet_seconds=0.05)
    )
    for wav, outcome in zip(wavs, outcomes):
        assert outcome.error is None and outcome.close_code == 1000
        assert outcome.transcript == expected[str(wav)]
        assert outcome.results[-1][1]["final"]
        assert [m["segment"] for _, m in outcome.results] == sorted(m["segment"] for _, m in outcome.results)


def test_a_stream_joins_a_freed_slot_and_the_cli_client_prints_the_transcript(
    run_dir, expected, checkpoint_server, capsys
):
    from streamformer.train.__main__ import main as cli

    _, _, wavs = run_dir
    assert checkpoint_server.busy_slots() == 0  # every earlier stream left its slot
    assert cli(["client", str(wavs[3]), str(wavs[2]), "--url", checkpoint_server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{wavs[3]}: {expected[str(wavs[3])]}" in lines and f"{wavs[2]}: {expected[str(wavs[2])]}" in lines
    assert any("final]" in line for line in lines)


def test_exported_artifact_serves_the_same(run_dir, loaded, expected, tmp_path):
    _, _, wavs = run_dir
    run, model, variables = loaded
    export_run(run, model, variables, tmp_path / "artifact", batch_size=2, max_frames=64)
    batcher = Batcher(ExportedBackend(tmp_path / "artifact"))
    batcher.warm_up()
    audios = [read_audio(w)[0] for w in wavs[:2]]
    with ServerThread(batcher, idle_timeout=0.5) as server:
        outcomes = _run(_staggered(server.url, audios, [0.0, 0.1]))
        silent = _run(_faulty(server.url, []))  # connects, then says nothing
    assert [o.transcript for o in outcomes] == [expected[str(w)] for w in wavs[:2]]
    assert silent == ("idle: expected a message at least every 0.5 s, got none", 1008)
    from streamformer.train.commands.serve import serve

    with pytest.raises(
        ValueError, match="max_streams: the artifact was exported for 2 streams, got --max-streams 5"
    ):
        serve(None, None, exported=tmp_path / "artifact", max_streams=5)
    with pytest.raises(
        ValueError, match="search: the artifact was exported with GreedySearch, got --search modified"
    ):
        serve(None, None, exported=tmp_path / "artifact", search="modified_beam")


def test_bad_arguments_are_named(run_dir, tmp_path, capsys):
    from streamformer.train.__main__ import main as cli

    workdir, _, wavs = run_dir
    cases = [
        (["serve"], "workdir: expected --workdir RUN or --exported DIR, got neither"),
        (["serve", "--workdir", str(workdir), "--port", "70000"], "port: expected an int in [0, 65535]"),
        (
            ["serve", "--workdir", str(workdir), "--max-streams", "0"],
            "max_streams: expected a positive int, got 0",
        ),
        (["serve", "--exported", str(tmp_path)], "no exported artifact (manifest.json)"),
        (
            ["serve", "--exported", str(tmp_path), "--quantize", "int8"],
            "quantize: an exported artifact keeps the weights it was exported with",
        ),
        (["client", str(wavs[0]), "--url", "http://127.0.0.1:1/"], "url: expected a ws:// or wss:// URL"),
        (["client", str(wavs[0]), "--url", "ws://127.0.0.1:1/"], "url: cannot connect to ws://127.0.0.1:1/"),
    ]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_endpoints_make_segments_final_and_times_run_on(run_dir, loaded):
    """Driven tick by tick: a rule that ends a segment every 0.6 s of audio; the finals' segments count up,
    their word times continue across segments, and the transcriber goes on (only the search restarts)."""
    from streamformer.decoding.endpoint import EndpointConfig, EndpointRule
    from streamformer.train.serve.batcher import SlotInput

    _, _, wavs = run_dir
    run, model, variables = loaded
    backend = CheckpointBackend(model, variables, run.tokenizer, run.stats, batch_size=2)
    batcher = Batcher(backend, endpoint=EndpointConfig(rules=(EndpointRule(False, 0.0, 0.6),)))
    audio = read_audio(wavs[1])[0]
    messages = []
    for begin in range(0, audio.size, 1600):
        result = batcher.tick([SlotInput(7, audio[begin : begin + 1600]), SlotInput()])
        messages += [json.loads(text) for _, text in result.messages]
        assert result.slots[1] is None and result.slots[0].samples_needed is not None
    while (
        not (result := batcher.tick([SlotInput(7, None, end=not messages[-1]["final"] or True), SlotInput()]))
        .slots[0]
        .done
    ):
        messages += [json.loads(text) for _, text in result.messages]
    messages += [json.loads(text) for _, text in result.messages]
    finals = [m for m in messages if m["final"]]
    assert [m["segment"] for m in finals] == list(range(len(finals))) and len(finals) >= 4
    starts = [w["start"] for m in finals for w in m["words"]]
    assert starts == sorted(starts) and starts[-1] > 0.6 and starts[-1] <= audio.size / 16000
    assert all(m["text"].startswith(" ") for m in finals[1:] if m["text"] and finals[0]["text"])


async def _faulty(url: str, messages: list) -> tuple[str | None, int | None]:
    """Sends ``messages`` (bytes or str) and returns (the error the server sent, its close code)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for message in messages:
            await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
        error = None
        async for reply in ws:
            if reply.type == aiohttp.WSMsgType.TEXT and "error" in json.loads(reply.data):
                error = json.loads(reply.data)["error"]
        return error, ws.close_code


def _wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_faults_close_that_stream_only(run_dir, expected, checkpoint_server):
    from streamformer.train.serve.protocol import MAX_MESSAGE_BYTES

    _, _, wavs = run_dir
    url = checkpoint_server.url
    audio = read_audio(wavs[2])[0]
    half = audio[:4000].astype("<f4").tobytes()

    async def scenario():
        good = asyncio.create_task(stream_audio(url, audio, realtime=True, packet_seconds=0.05))
        faults = []
        for messages in (
            [half, b"\x00\x00\x80"],  # 3 bytes: not float32 samples
            [half, np.array([0.1, np.nan], "<f4").tobytes()],
            [b"\x00" * (MAX_MESSAGE_BYTES + 4)],
            ["Hello"],
            [half, '{"sample_rate": 8000}'],  # a rate must come first
            ['{"sample_rate": 0}'],
        ):
            faults.append(await _faulty(url, messages))
        return faults, await good

    faults, good = _run(scenario())
    assert faults[0][1] == 1007 and "a multiple of 4 bytes), got 3 bytes" in faults[0][0]
    assert faults[1][1] == 1007 and "expected finite samples, got nan at sample 1" in faults[1][0]
    assert faults[2][1] == 1009 and f"expected at most {MAX_MESSAGE_BYTES} bytes" in faults[2][0]
    assert (
        faults[3][1] == 1008
        and 'expected "Done" or, first, {"sample_rate": N}, got \'Hello\'' in faults[3][0]
    )
    assert faults[4][1] == 1008 and "must come before any audio" in faults[4][0]
    assert faults[5][1] == 1008 and "sample_rate: expected an integer number of Hz" in faults[5][0]
    assert good.error is None and good.transcript == expected[str(wavs[2])]  # the others went on
    assert _wait_for(lambda: checkpoint_server.busy_slots() == 0)


def test_a_client_gone_mid_stream_frees_its_slot_and_extra_streams_are_refused(run_dir, checkpoint_server):
    _, _, wavs = run_dir
    url = checkpoint_server.url
    samples = read_audio(wavs[1])[0][:8000].astype("<f4").tobytes()

    async def scenario():
        async with aiohttp.ClientSession() as session:
            held = [await session.ws_connect(url) for _ in range(SLOTS)]
            for ws in held:
                await ws.send_bytes(samples)
            assert _wait_for(lambda: checkpoint_server.busy_slots() == SLOTS)
            refused = await _faulty(url, [])
            for ws in held:  # gone without "Done"
                await ws.close()
            return refused

    error, code = _run(scenario())
    assert code == 1013 and f"all {SLOTS} streams are busy; try again later" in error
    assert _wait_for(lambda: checkpoint_server.busy_slots() == 0)


def test_backpressure_bounds_what_a_fast_client_leaves_waiting(run_dir, checkpoint_server):
    """30 s sent as fast as the connection takes it: the server stops reading while 1 s (buffer_seconds)
    waits to be decoded, so what it holds stays under that plus one message."""
    _, _, wavs = run_dir
    audio = np.tile(read_audio(wavs[1])[0], 12)
    backlog, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            backlog.extend(s.received - s.stepped for s in list(checkpoint_server.server.streams.values()))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome = _run(stream_audio(checkpoint_server.url, audio, packet_seconds=0.1))
    finally:
        stop.set()
        watcher.join()
    assert outcome.error is None and outcome.results[-1][1]["final"]
    assert max(backlog) <= 16000 * 1.0 + 1600 + 16000 * 0.3  # bound + a message + the segment in flight
    assert max(backlog) > 16000 * 0.5  # it did fill up: the client was faster than the decoding


def test_another_sample_rate_is_resampled_as_transcribe_does(run_dir, expected, checkpoint_server, tmp_path):
    _, _, wavs = run_dir
    audio, _ = soundfile.read(wavs[1], dtype="float32")
    from streamformer.train.corpora.audio import resample

    low = resample(audio, 16000, 8000)
    soundfile.write(tmp_path / "low.wav", low, 8000)
    transcript = _run(_rated(checkpoint_server.url, low, 8000))
    run_expected = read_audio(tmp_path / "low.wav")[0]
    assert transcript == _run(stream_audio(checkpoint_server.url, run_expected)).transcript


async def _rated(url: str, audio: np.ndarray, rate: int) -> str:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"sample_rate": rate}))
        for begin in range(0, audio.size, 777):
            await ws.send_bytes(audio[begin : begin + 777].astype("<f4").tobytes())
        await ws.send_str("Done")
        finals = [json.loads(m.data) for m in [m async for m in ws] if m.type == aiohttp.WSMsgType.TEXT]
    return "".join(m["text"] for m in finals if m.get("final"))


def test_cli_serve_compiles_listens_and_drains_on_sigterm(run_dir, cache):
    """``python -m train serve`` (int8 weights): the listening line once compiled; SIGTERM: streams in flight get
    their finals (the last message final, close 1001), new connections are refused, exit status 0."""
    workdir, _, wavs = run_dir
    env = dict(os.environ, PYTHONPATH=str(ROOT), STREAMFORMER_COMPILATION_CACHE=str(cache))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            "serve",
            "--workdir",
            str(workdir),
            "--port",
            "0",
            "--max-streams",
            "2",
            "--quantize",
            "int8",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("listening on ws://127.0.0.1:"), (line, process.stderr.read()[-3000:])
        url = line.removeprefix("listening on ") + "/"
        audio = read_audio(wavs[1])[0]

        async def scenario():
            streams = [
                asyncio.create_task(stream_audio(url, audio, realtime=True, packet_seconds=0.05))
                for _ in range(2)
            ]
            await asyncio.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*streams)

        outcomes = _run(scenario())
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for outcome in outcomes:
        assert outcome.error is None and outcome.results and outcome.results[-1][1]["final"]
        assert outcome.close_code == 1001
        assert outcome.sent[-1][1] < audio.size or outcome.results  # stopped before the end
    err = process.stderr.read()
    assert "draining: 2 stream(s) in flight" in err and "stopped after serving 2 stream(s)" in err
    assert "int8 weights" in err


def test_a_failing_step_closes_its_streams_and_the_server_goes_on(run_dir, expected, checkpoint_server):
    _, _, wavs = run_dir
    batcher = checkpoint_server.server.batcher
    tick = batcher.tick

    def failing(inputs):
        raise RuntimeError("a bug")

    batcher.tick = failing
    try:
        error, code = _run(_faulty(checkpoint_server.url, [np.zeros(4000, "<f4").tobytes(), "Done"]))
    finally:
        batcher.tick = tick
    assert (error, code) == ("the server failed to decode this stream", 1008)
    outcome = _run(stream_audio(checkpoint_server.url, read_audio(wavs[3])[0]))
    assert outcome.transcript == expected[str(wavs[3])]
