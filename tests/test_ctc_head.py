"""The auxiliary CTC head (``optim.ctc_weight``, ``streamformer.transducer.with_ctc_head``): the CTC loss on
hand-counted paths, training with it, weight 0 = the transducer's loss exactly, and conversion to torchaudio
(which has no CTC head: left out with a warning, initialised freshly on the way back)."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from streamformer.convert import from_torchaudio, to_torchaudio
from streamformer.train import config as config_lib
from streamformer.train.loop.step import (
    build_model,
    ctc_losses,
    init_state,
    make_loss_fn,
    make_optimizer,
    make_train_step,
)
from streamformer.transducer import RNNT, emformer_rnnt_model, with_ctc_head
from tests.rnnt_cases import TINY_RNNT
from tests.test_train import micro_config

V, BLANK = 25, 24  # 24 BPE pieces + blank, the last id (as streamformer.text's tokenizer)


def micro(*extra: str) -> config_lib.Config:
    """test_train's micro model, deterministic (no dropout, no SpecAugment), the full RNN-T loss."""
    settings = ["model.transformer_dropout=0", "model.lstm_dropout=0", "data.spec_augment=false"]
    return micro_config(*settings, "optim.loss=full", "optim.warmup_steps=1", *extra)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    targets = np.stack([rng.permutation(BLANK)[:5] for _ in range(4)]).astype(np.int32)  # no repeats
    return {
        "features": rng.standard_normal((4, 36, 80)).astype(np.float32),
        "feature_lengths": np.array([32, 30, 24, 16], np.int32),
        "targets": targets,
        "target_lengths": np.array([5, 4, 3, 2], np.int32),
        "valid": np.array([True, True, True, False]),
    }


def test_ctc_loss_counts_the_paths_with_the_transducers_blank():
    """Uniform logits over 3 symbols (blank 2, the last): -log(paths / 3^T) with the paths counted by hand;
    no path (too few frames for the tokens and their repeats): 0."""
    logits = jnp.zeros((4, 3, 3))
    targets = jnp.array([[0, 1], [1, 1], [1, 1], [0, 1]], jnp.int32)
    lengths = jnp.array([3, 3, 2, 1])  # frames
    losses = np.asarray(
        jax.jit(ctc_losses, static_argnames="blank")(logits, lengths, targets, jnp.array([2] * 4), blank=2)
    )
    # "0 1" in 3 frames: 0 1 b, 0 b 1, b 0 1, 0 0 1, 0 1 1; "1 1" in 3 frames: 1 b 1 only.
    np.testing.assert_allclose(losses[:2], [math.log(27 / 5), math.log(27)], rtol=1e-5)
    assert losses[2] == 0.0 and losses[3] == 0.0  # "1 1" needs 3 frames, "0 1" needs 2


def test_weight_zero_is_the_transducer_loss_exactly_and_the_weight_adds_ctc(batch):
    plain, with_head = build_model(micro().model, V), build_model(micro().model, V, ctc_head=True)
    params = jax.jit(lambda: init_state(with_head, make_optimizer(micro().optim, 10), 0).params)()
    assert params["ctc_head"]["linear"]["kernel"].shape == (32, V)  # beside transcriber, predictor, joiner
    plain_params = {k: v for k, v in params.items() if k != "ctc_head"}
    key = jax.random.key(1)

    def loss(model, config, params):
        return jax.jit(make_loss_fn(model, config, BLANK), static_argnums=3)(params, batch, key, True)

    today = loss(plain, micro(), plain_params)
    jax.tree.map(np.testing.assert_array_equal, today, loss(with_head, micro(), params))

    weighted = loss(with_head, micro("optim.ctc_weight=0.3"), params)

    @jax.jit
    def ctc_of(params):
        sources, lengths = with_head.apply({"params": params}, batch["features"], batch["feature_lengths"],
                                           method=RNNT.transcribe)  # fmt: skip
        logits = with_head.apply({"params": params}, sources, method=RNNT.ctc_logits)
        return ctc_losses(logits, lengths, batch["targets"], batch["target_lengths"], BLANK)

    ctc = ctc_of(params)
    expected = today[0] + 0.3 * float(jnp.sum(ctc * batch["valid"])) / 3  # loss_reduction "mean"
    np.testing.assert_allclose(float(weighted[0]), expected, rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, today[1], weighted[1])  # the logged loss: the transducer's


def test_training_with_the_ctc_head_lowers_both_losses(batch):
    config = micro("optim.ctc_weight=0.5")
    model = build_model(config.model, V, ctc_head=True)
    optimizer = make_optimizer(config.optim, 100)
    state = jax.jit(lambda: init_state(model, optimizer, 0))()
    step = jax.jit(make_train_step(model, optimizer, config, blank=BLANK))

    @jax.jit
    def ctc_of(params):
        sources, lengths = model.apply({"params": params}, batch["features"], batch["feature_lengths"],
                                       method=RNNT.transcribe)  # fmt: skip
        logits = model.apply({"params": params}, sources, method=RNNT.ctc_logits)
        return jnp.sum(ctc_losses(logits, lengths, batch["targets"], batch["target_lengths"], BLANK)[:3])

    ctc, transducer = [float(ctc_of(state.params))], []
    for _ in range(6):
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        ctc.append(float(ctc_of(state.params)))
        transducer.append(float(metrics["loss"]))
    assert np.all(np.isfinite(ctc)) and ctc[-1] < 0.8 * ctc[0], ctc
    assert transducer[-1] < transducer[0], transducer


def test_bad_settings_say_what_to_do():
    plain = build_model(micro().model, V)
    with pytest.raises(ValueError, match=r"optim.ctc_weight: > 0 needs the CTC head"):
        make_loss_fn(plain, micro("optim.ctc_weight=0.2"), BLANK)
    with pytest.raises(ValueError, match=r"optim.ctc_weight: expected a number >= 0, got -0.1"):
        make_loss_fn(plain, micro("optim.ctc_weight=-0.1"), BLANK)
    with pytest.raises(ValueError, match="with_ctc_head"):
        plain.apply({"params": {}}, jnp.zeros((1, 2, 32)), method=RNNT.ctc_logits)
    with pytest.raises(TypeError, match="model: expected an RNNT"):
        with_ctc_head(object())


def test_conversion_leaves_the_head_out_with_a_warning_and_initialises_it_back(torchaudio_ref):
    plain = emformer_rnnt_model(**TINY_RNNT)
    model = with_ctc_head(plain)
    variables = jax.jit(model.init)(jax.random.key(0), *model.example_inputs())
    with pytest.warns(
        UserWarning, match="to_torchaudio: torchaudio's RNNT has no CTC head; left out ctc_head"
    ):
        state_dict = to_torchaudio(model, variables)
    without = {"params": {k: v for k, v in variables["params"].items() if k != "ctc_head"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert state_dict.keys() == to_torchaudio(plain, without).keys()
    reference = torchaudio_ref.models.emformer_rnnt_model(**TINY_RNNT)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)

    with pytest.warns(UserWarning, match=r"torchaudio has no ctc_head\.linear; initialised them freshly"):
        back = from_torchaudio(model, state_dict)
    flat, original = (traverse_util.flatten_dict(p["params"]) for p in (back, variables))
    assert flat.keys() == original.keys()
    for path, value in flat.items():
        if path[0] != "ctc_head":
            np.testing.assert_array_equal(np.asarray(value), np.asarray(original[path]))
    assert flat[("ctc_head", "linear", "kernel")].shape == (
        TINY_RNNT["encoding_dim"],
        TINY_RNNT["num_symbols"],
    )
