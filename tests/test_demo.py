import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "stream_demo.py"


def test_streaming_demo_matches_forward(capsys):
    spec = importlib.util.spec_from_file_location("stream_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--frames", "21", "--layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "streamed output equals the full-utterance output" in out
    assert out.count("  segment ") == 3  # 21 frames in segments of 8: two full, one partial
