"""The server's browser page in a real browser: headless Chromium captures a test utterance from a fake
microphone (``--use-file-for-fake-audio-capture``), the page streams it through its AudioWorklet to
``python -m train serve``, and the page's final text must be the utterance's transcript (``python -m train
transcribe``'s of the same file is shown beside it). Driven over the DevTools protocol (aiohttp's WebSocket
client); run by scripts/browser_test.sh.

    python scripts/browser_test.py --workdir runs/main [--utterance 0] [--chromium /usr/bin/chromium]

A trained run is needed (runs/main, from ``scripts/main.sh``): the browser resamples the capture and starts it
at its own moment, so only a model that recognises the utterance gives the same words as the file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these the closed network refuses Chromium's connections
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
]


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT, env=env, text=True, **kwargs)


def expected_transcript(workdir: Path, wav: Path) -> str:
    process = _python("transcribe", "--workdir", str(workdir), str(wav), stdout=subprocess.PIPE)
    out, _ = process.communicate(timeout=600)
    finals = [line for line in out.splitlines() if line.startswith("final: ")]
    if process.returncode or not finals:
        raise SystemExit(f"browser test: python -m train transcribe failed (exit {process.returncode})")
    return finals[-1].removeprefix("final: ")


class Page:
    """One page over the DevTools protocol: ``evaluate`` a JavaScript expression, get its value."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def evaluate(self, expression: str):
        self.next_id += 1
        await self.ws.send_json(
            {
                "id": self.next_id,
                "method": "Runtime.evaluate",
                "params": {
                    "expression": expression,
                    "awaitPromise": True,
                    "returnByValue": True,
                    "userGesture": True,
                },
            }
        )
        async for message in self.ws:
            reply = json.loads(message.data)
            if reply.get("id") == self.next_id:
                if "exceptionDetails" in reply.get("result", {}):
                    raise RuntimeError(f"page: {expression} raised {reply['result']['exceptionDetails']}")
                return reply["result"]["result"].get("value")
        raise RuntimeError("page: the DevTools connection closed")


async def drive(devtools: str, page_url: str, seconds: float, timeout: float) -> dict:
    async with aiohttp.ClientSession() as session:
        port = re.match(r"ws://[^:]+:(\d+)/", devtools).group(1)
        async with session.get(f"http://127.0.0.1:{port}/json/list") as reply:
            targets = [t for t in await reply.json() if t["type"] == "page"]
        async with session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=1 << 24) as ws:
            page = Page(ws)
            deadline = time.monotonic() + timeout
            while await page.evaluate("typeof window.page === 'object' && document.readyState") != "complete":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"page: {page_url} did not load")
                await asyncio.sleep(0.1)
            await page.evaluate("window.startCapture()")
            state = await page.evaluate("window.page.state")
            if state != "recording":
                raise RuntimeError(
                    f"page: expected to be recording, got {state!r} ({await page.evaluate('window.page.error')})"
                )
            await asyncio.sleep(seconds)
            partial_seen = await page.evaluate("window.page.partial + window.page.finals")
            await page.evaluate("window.stopCapture()")
            while (state := await page.evaluate("window.page.state")) not in ("done", "error"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"page: still {state!r} after {timeout} s")
                await asyncio.sleep(0.1)
            result = await page.evaluate("JSON.stringify(window.page)")
            shown = await page.evaluate("document.getElementById('text').textContent")
            return {**json.loads(result), "shown": shown, "seen_while_recording": partial_seen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", default=str(ROOT / "runs" / "main"), help="a trained run (default runs/main)"
    )
    parser.add_argument("--utterance", type=int, default=0, help="test utterance of the synthesized data")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if not (workdir / "checkpoints").is_dir():
        raise SystemExit(
            f"workdir: expected a trained run with checkpoints/ (scripts/main.sh makes runs/main), got {workdir}"
        )
    sys.path.insert(0, str(ROOT))
    import soundfile

    from train.corpora import synth

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        utterance = synth.synthesize(synth.SynthConfig(), "test", args.utterance)
        wav = Path(tmp) / "utterance.wav"
        soundfile.write(wav, np.concatenate([utterance.audio, np.zeros(8000, np.float32)]), 16000)
        expected = expected_transcript(workdir, wav)
        server = _python(
            "serve", "--workdir", str(workdir), "--port", "0", "--max-streams", "2",
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        browser = None
        try:
            line = server.stdout.readline().strip()
            if not line.startswith("listening on ws://"):
                raise SystemExit(f"browser test: the server did not start (got {line!r})")
            page_url = line.removeprefix("listening on ws://").join(["http://", "/"])
            browser = subprocess.Popen(
                [args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                 f"--use-file-for-fake-audio-capture={wav}%noloop", page_url],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            devtools = None
            for line in browser.stderr:
                if line.startswith("DevTools listening on "):
                    devtools = line.split()[-1]
                    break
            if devtools is None:
                raise SystemExit(f"browser test: {args.chromium} did not start (exit {browser.wait()})")
            seconds = utterance.audio.size / 16000 + 0.5
            page = asyncio.run(drive(devtools, page_url, seconds + 0.5, args.timeout))
        finally:
            for process in (browser, server):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(30)
    got = page["finals"].strip()
    print(f"reference text:        {utterance.text}")
    print(f"transcribe:            {expected}")
    print(f"page (while speaking): {page['seen_while_recording'].strip()}")
    print(f"page (final):          {got}  [{page['segments']} segment(s), state {page['state']}]")
    print(f"browser test: {time.perf_counter() - started:.1f} s")
    if page["error"] or got != utterance.text or page["shown"].strip() != got:
        print(
            "browser test: FAILED (the page's final text is not the utterance's transcript)", file=sys.stderr
        )
        if expected != utterance.text:
            print(
                "browser test: this run does not recognise the utterance offline either: train it longer or "
                "choose another with --utterance",
                file=sys.stderr,
            )
        return 1
    print("browser test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
