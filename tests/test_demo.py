from streamformer import demo


def test_streaming_demo_matches_forward(capsys):
    assert demo.main(["--frames", "21", "--layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "streamed output equals the full-utterance output" in out
    assert out.count("  segment ") == 3  # 21 frames in segments of 8: two full, one partial
