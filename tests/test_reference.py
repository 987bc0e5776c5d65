def test_reference_is_torchaudio_2_8(torchaudio_ref):
    assert torchaudio_ref.__version__ == "2.8.0"
    assert torchaudio_ref.models.Emformer.__module__ == "torchaudio.models.emformer"
    assert torchaudio_ref.prototype.models.ConvEmformer is not None
    assert torchaudio_ref.transforms.MelSpectrogram is not None
