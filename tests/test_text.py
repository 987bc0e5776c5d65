"""streamformer.text: BPE training, RNN-T targets, parity with torchaudio's _SentencePieceTokenProcessor."""

import sys

import numpy as np
import pytest

from streamformer import text as T

WORDS = (
    "the a speech model streams audio frames into memory segments with left and right context while "
    "beam search keeps hypotheses of tokens over time quickly"
).split()


def _sentences(rng, count):
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 10))) for _ in range(count)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm")
    path = T.train_bpe(_sentences(np.random.default_rng(0), 300), folder / "bpe.model", vocab_size=64)
    assert sorted(p.name for p in folder.iterdir()) == ["bpe.model"]  # written atomically, nothing left over
    return path


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return T.Tokenizer(model_path)


def test_trained_model_has_torchaudio_recipe_ids(tokenizer):
    assert tokenizer.vocab_size == 64
    assert tokenizer.blank_id == 64 and tokenizer.num_symbols == 65
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.sp_model.id_to_piece(3) == "<unk>"


def test_encode_decode_round_trip(tokenizer):
    for sentence in _sentences(np.random.default_rng(1), 20):
        ids = tokenizer.encode(sentence)
        assert ids and all(4 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == sentence
        assert tokenizer.decode(np.array([tokenizer.blank_id, *ids, tokenizer.blank_id])) == sentence
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 64\]"):
        tokenizer.decode([5, 65])
    with pytest.raises(TypeError, match="text: expected a str"):
        tokenizer.encode(["the"])


def test_encode_batch_pads_with_pad_id(tokenizer):
    texts = ["the speech model", "a", "beam search keeps hypotheses of tokens"]
    targets, lengths = tokenizer.encode_batch(texts)
    encoded = [tokenizer.encode(t) for t in texts]
    assert targets.dtype == np.int32 and lengths.dtype == np.int32
    assert targets.shape == (3, max(map(len, encoded)))
    assert lengths.tolist() == [len(e) for e in encoded]
    for row, ids in zip(targets, encoded, strict=True):
        assert row[: len(ids)].tolist() == ids
        assert (row[len(ids) :] == tokenizer.pad_id).all()
    fixed, _ = tokenizer.encode_batch(texts, pad_to=40, pad_value=0)
    assert fixed.shape == (3, 40) and (fixed[1, lengths[1] :] == 0).all()
    with pytest.raises(ValueError, match="pad_to: expected an int >= the longest target"):
        tokenizer.encode_batch(texts, pad_to=2)
    with pytest.raises(ValueError, match="texts: expected at least one transcript"):
        tokenizer.encode_batch([])
    with pytest.raises(TypeError, match="texts: expected a sequence of str"):
        tokenizer.encode_batch("the")


def test_unrepresentable_characters_are_named(tokenizer):
    with pytest.raises(ValueError, match=r"got 'W', 'ö', 'Q' in 'the Wörld Q'") as info:
        tokenizer.encode("the Wörld Q")
    assert "unk id 3" in str(info.value)
    with pytest.raises(ValueError, match="'X'"):
        tokenizer.encode_batch(["the model", "X"])


def test_token_processor_matches_torchaudio(torchaudio_ref, model_path, tokenizer):
    reference = torchaudio_ref.pipelines.rnnt_pipeline._SentencePieceTokenProcessor(model_path)
    ours = T.TokenProcessor(model_path)
    rng = np.random.default_rng(2)
    specials = [tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id]
    cases = [[tokenizer.blank_id], [tokenizer.blank_id, *tokenizer.encode("the model streams audio")]]
    for _ in range(40):
        body = rng.integers(0, tokenizer.vocab_size, size=rng.integers(0, 12)).tolist()
        body += rng.choice(specials, size=rng.integers(0, 3)).tolist()
        cases.append([tokenizer.blank_id, *rng.permutation(body).tolist()])
    saw_bos = False
    for tokens in cases:
        for lstrip in (True, False):
            assert ours(tokens, lstrip=lstrip) == reference(tokens, lstrip=lstrip)
        saw_bos |= tokenizer.bos_id in tokens[1:]
    assert saw_bos  # bos is kept, as torchaudio keeps it
    assert ours(cases[1]) == "the model streams audio"
    assert ours(cases[1], lstrip=False) == " the model streams audio"
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 64\)"):
        ours([64, 5, 64])


def test_training_and_loading_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="sentencepiece could not train"):
        T.train_bpe(["a b c", "c b a"], tmp_path / "big.model", vocab_size=5000)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="vocab_size: expected an int >= 5"):
        T.train_bpe(["a b"], tmp_path / "x.model", vocab_size=3)
    with pytest.raises(ValueError, match="at least one non-empty transcript"):
        T.train_bpe(["", "  "], tmp_path / "x.model", vocab_size=8)
    with pytest.raises(FileNotFoundError, match="model_path: no SentencePiece model"):
        T.Tokenizer(tmp_path / "missing.model")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match=r"pip install 'streamformer\[train\]'"):
        T.Tokenizer(tmp_path / "missing.model")
