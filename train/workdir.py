"""What the commands share: a run's config, its data preparation, its model and the variables of its
checkpoints (``Run``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE_DIR",
    "Run",
    "config_for",
    "enable_compilation_cache",
    "must_match",
    "write_initialised_run",
    "say",
    "stored_or_preset",
]

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamformer" / "jax"


def say(message: str) -> None:
    """A line for the person running the command (stderr)."""
    print(message, file=sys.stderr, flush=True)


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``directory`` (default ~/.cache/streamformer/jax)."""
    import jax

    path = Path(directory) if directory else DEFAULT_CACHE_DIR
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def stored_or_preset(workdir, preset_name: str | None = None, default: str = "tiny"):
    """The workdir's config.json when resuming (no preset named), else the preset (``default`` when none)."""
    from .config import from_dict, preset

    stored = Path(workdir) / "config.json"
    if preset_name is None and stored.exists():
        return from_dict(json.loads(stored.read_text()))
    return preset(preset_name or default)


def config_for(workdir, preset_name: str | None = None, overrides: list[str] | None = None):
    """A run's config: ``stored_or_preset`` (default tiny), then ``--set`` overrides."""
    from .config import apply_overrides

    return apply_overrides(stored_or_preset(workdir, preset_name), overrides or [])


def must_match(config, num_symbols: int) -> dict:
    """The parts of a run's config that a checkpoint it resumes must have been written with (as ``to_dict``
    writes them: without ``model.weights``, always float32 in a run)."""
    from .config import to_dict

    return {"model": to_dict(config)["model"], "num_symbols": num_symbols}


class Run:
    """What fit, eval and transcribe share: the config, data preparation, the model and its variables."""

    def __init__(self, config, workdir: Path):
        self.config, self.workdir = config, workdir
        self.tokenizer = self.stats = None
        self.examples: dict[str, list] = {}
        self.reports: dict = {}  # split -> screen.DataReport (the utterances skipped as unusable)

    def prepare(self, split: str) -> list:
        from .corpora import prepare

        if split not in self.examples:
            started = time.perf_counter()
            self.examples[split], self.tokenizer, self.stats = prepare.prepare_split(
                self.config, self.workdir, split, self.tokenizer, self.stats, reports=self.reports
            )
            say(
                f"{split}: {len(self.examples[split])} utterances ready "
                f"in {time.perf_counter() - started:.1f} s"
            )
        return self.examples[split]

    def train_source(self):
        """The training data as the trainer's batch source: a ``ShardSource`` reading the shard folder that
        data.train names (nothing loaded now), else the prepared examples in memory (``prepare("train")``)."""
        from .corpora import prepare, shards
        from .loop.loader import MemorySource

        folder = prepare.shard_folder(self.config.data, "train")
        if folder is None:
            examples = self.prepare("train")
            prepare.check_finite(examples, "train")
            return MemorySource(examples, self.config.data.groups)
        self.load_frontend()
        source = shards.ShardSource(folder, "train", self.config.data, self.stats)
        say(f"train: {len(source.lengths)} utterances in {len(source.split.shards)} shards ({folder})")
        return source

    def load_frontend(self) -> None:
        from .corpora import prepare

        self.tokenizer = prepare.tokenizer_for(self.config, self.workdir, None)
        self.stats = prepare.global_stats_for(self.config, self.workdir, None)

    @property
    def num_symbols(self) -> int:
        from .corpora import prepare

        return prepare.check_fits(self.config, self.tokenizer, self.stats)

    def model(self):
        from .loop.step import build_model

        return build_model(
            self.config.model,
            self.num_symbols,
            simple_loss_projections=self.config.optim.loss == "pruned",
            ctc_head=self.config.optim.ctc_weight > 0,
        )

    def restore_variables(self, step: int | None = None):
        """The parameters of checkpoint ``step`` (default: the latest) as model variables."""
        import jax

        from .loop.checkpoint import Checkpoints, abstract_like
        from .loop.mesh import Mesh1D
        from .loop.step import init_state, make_optimizer

        model = self.model()
        optimizer = make_optimizer(self.config.optim, self.config.loop.steps)
        abstract = jax.eval_shape(lambda: init_state(model, optimizer, self.config.loop.seed))
        checkpoints = Checkpoints(
            self.workdir / "checkpoints",
            self.config.loop.keep_checkpoints,
            must_match(self.config, self.num_symbols),
        )
        try:
            state = checkpoints.restore(abstract_like(abstract, Mesh1D().replicated), step)
        finally:
            checkpoints.close()
        return model, {"params": state.params}, int(state.step)


def write_initialised_run(workdir, config, tokenizer_path, stats, *, step: int = 1, edit_params=None) -> None:
    """A run folder as ``fit`` leaves it, with a checkpoint of the model's initial (untrained) parameters:
    config.json, tokenizer.model (copied from ``tokenizer_path``), global_stats.json (``stats``, a
    ``GlobalStats``), checkpoints/<step>/. For serving or timing a configuration before training it (load
    benchmarks, tests); ``edit_params(params) -> params`` may change the parameters first."""
    import shutil

    from streamformer.text import Tokenizer

    from .config import to_dict
    from .loop.checkpoint import Checkpoints
    from .loop.metrics import save_json
    from .loop.step import build_model, init_state, make_optimizer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if Path(tokenizer_path).resolve() != (workdir / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_path, workdir / "tokenizer.model")
    num_symbols = Tokenizer(workdir / "tokenizer.model").num_symbols
    stats.save(workdir / "global_stats.json")
    save_json(workdir / "config.json", to_dict(config))
    model = build_model(config.model, num_symbols, simple_loss_projections=config.optim.loss == "pruned")
    state = init_state(model, make_optimizer(config.optim, config.loop.steps), config.loop.seed)
    if edit_params is not None:
        state = state.replace(params=edit_params(state.params))
    checkpoints = Checkpoints(
        workdir / "checkpoints", config.loop.keep_checkpoints, must_match(config, num_symbols)
    )
    try:
        checkpoints.save(step, state, {**to_dict(config), "num_symbols": num_symbols})
    finally:
        checkpoints.close()
