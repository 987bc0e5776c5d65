"""Where a real-speech run's word errors come from: new text or the audio (benchmarks/speech_recipe.md).

    python benchmarks/speech_diagnostics.py runs/speech [--corpus runs/speech/corpus] [--train-limit 200]

Decodes (greedy, offline) with the workdir's latest checkpoint:
- test-seen and test-unseen: WER / CER, and the share of reference words decoded right, apart for words that
  occur in the training transcripts ("in-vocabulary") and words that do not ("OOV": only spelling them from
  their sound can get them right);
- the first ``--train-limit`` training utterances of real sentences (not the recombined texts): the same
  model on text it has trained on;
- test-seen synthesised again clean (same sentence, voice, rate and pitch; no noise, no reverberation, same
  level range): how much of the error the degradations cause.

Each set's row is followed by one per text source (the corpus's sources.json), when the corpus has several.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def word_hits(reference: list[str], hypothesis: list[str]) -> list[bool]:
    """Per reference word: matched by an aligned hypothesis word in a minimum-edit alignment."""
    n, m = len(reference), len(hypothesis)
    cost = [[i + j if i == 0 or j == 0 else 0 for j in range(m + 1)] for i in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            same = reference[i - 1] == hypothesis[j - 1]
            cost[i][j] = min(cost[i - 1][j] + 1, cost[i][j - 1] + 1, cost[i - 1][j - 1] + (not same))
    hits, i, j = [False] * n, n, m
    while i > 0 and j > 0:
        same = reference[i - 1] == hypothesis[j - 1]
        if cost[i][j] == cost[i - 1][j - 1] + (not same):
            hits[i - 1], i, j = same, i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return hits


def _row(name: str, pairs: list[tuple[str, str]], vocabulary: set[str]) -> dict:
    """WER, CER and the known / unheard words decoded right of (reference, hypothesis) ``pairs``; printed."""
    from streamformer.train.evaluation import error_rates

    rates = error_rates(*zip(*pairs))
    known, new = [0, 0], [0, 0]  # [words, decoded right]
    for text, hypothesis in pairs:
        reference = text.split()
        for word, hit in zip(reference, word_hits(reference, hypothesis.split()), strict=True):
            counts = known if word in vocabulary else new
            counts[0] += 1
            counts[1] += hit
    row = {
        "set": name, "utterances": len(pairs), "wer": rates["wer"], "cer": rates["cer"],
        "in_vocabulary_words": known[0], "in_vocabulary_right": known[1] / max(known[0], 1),
        "oov_words": new[0], "oov_right": new[1] / max(new[0], 1),
    }  # fmt: skip
    print(
        f"| {name} | {len(pairs)} | {100 * row['wer']:.1f} % | {100 * row['cer']:.1f} % | "
        f"{100 * row['in_vocabulary_right']:.1f} % of {known[0]} | "
        f"{100 * new[0] / max(known[0] + new[0], 1):.1f} % ({new[0]}) | {100 * row['oov_right']:.1f} % |",
        flush=True,
    )
    return row


def report(
    name: str,
    run,
    model,
    variables,
    split: str,
    vocabulary: set[str],
    limit: int | None = None,
    sources: dict[str, str] | None = None,
) -> dict:
    """The row of a set (greedy, offline), with one row per text source under "sources" when ``sources``
    (utterance id -> source) names more than one."""
    from streamformer.train.evaluation import evaluate
    from streamformer.train.loop.batches import bucket_frames_for

    examples = run.prepare(split)[:limit]
    started = time.perf_counter()
    rates, hypotheses = evaluate(
        model, variables, examples, run.tokenizer, beam_width=0, streaming=False,
        bucket_frames=bucket_frames_for(run.config, examples),
    )  # fmt: skip
    pairs = [(e.text, h) for e, h in zip(examples, hypotheses, strict=True)]
    row = _row(name, pairs, vocabulary) | {"seconds": time.perf_counter() - started}
    groups: dict[str, list[tuple[str, str]]] = {}
    for example, pair in zip(examples, pairs, strict=True):
        groups.setdefault((sources or {}).get(example.id, ""), []).append(pair)
    if len(groups) > 1:
        row["sources"] = {s: _row(f"{name}: {s or '?'}", g, vocabulary) for s, g in sorted(groups.items())}
    return row


def clean_test_seen(corpus: Path, out: Path) -> Path:
    """test-seen synthesised again without noise and reverberation (the builder's own rendering code)."""
    from streamformer.train.corpora import espeak

    manifest = out / "test-seen.jsonl"
    if manifest.exists():
        return manifest
    stored = json.loads((corpus / "corpus.json").read_text())["config"]
    config = espeak.EspeakCorpusConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
    )
    clean = dataclasses.replace(config, reverb_probability=0.0, noise_snr_db=(120.0, 120.0))
    wanted = [
        json.loads(line)["id"] for line in (corpus / "test-seen.jsonl").read_text().splitlines() if line
    ]
    specs = {spec.id: spec for spec in espeak.plan_utterances(config)}
    rows = espeak.render_shard([specs[i] for i in wanted], clean, str(out))
    lines = [json.dumps({"audio": f"test/{r['id'].split('-')[0]}/{r['id'].split('-')[1]}/{r['id']}.flac",
                         "text": r["text"], "id": r["id"]}) for r in rows]  # fmt: skip
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    from streamformer.train.config import from_dict
    from streamformer.train.corpora import audio as data_lib
    from streamformer.train.workdir import Run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--corpus", type=Path, help="the run's corpus (default: its results.json says)")
    parser.add_argument("--train-limit", type=int, default=200)
    parser.add_argument(
        "--clean-dir", type=Path, help="where the clean test-seen goes (default <workdir>/clean)"
    )
    args = parser.parse_args()
    workdir = args.workdir
    corpus = args.corpus or Path(json.loads((workdir / "results.json").read_text())["corpus"]["root"])
    config = from_dict(json.loads((workdir / "config.json").read_text()))
    vocabulary = {w for e in data_lib.list_librispeech(corpus / "train") for w in e.text.split()}
    sources_file = corpus / "sources.json"  # utterance id -> text source (corpora with several sources)
    sources = json.loads(sources_file.read_text()) if sources_file.exists() else None

    def run_on(test: Path) -> Run:
        run = Run(dataclasses.replace(config, data=dataclasses.replace(config.data, test=str(test))), workdir)
        run.load_frontend()
        return run

    seen = run_on(corpus / "test-seen.jsonl")
    model, variables, step = seen.restore_variables()
    real_train = [e for e in data_lib.list_librispeech(corpus / "train") if e.id.split("-")[1] == "1"]
    train_manifest = workdir / "diagnostics-train.jsonl"
    train_manifest.write_text(
        "".join(json.dumps({"audio": str(e.path), "text": e.text, "id": e.id}) + "\n" for e in real_train)
    )
    clean = clean_test_seen(corpus, args.clean_dir or workdir / "clean")
    print(f"checkpoint {step} of {workdir}; corpus {corpus}; training vocabulary {len(vocabulary)} words\n")
    print(
        "| set | utterances | WER | CER | in-vocabulary words right | OOV share (words) | OOV words right |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = [report("test-seen", seen, model, variables, "test", vocabulary, sources=sources)]
    unseen = run_on(corpus / "test-unseen.jsonl")
    rows.append(report("test-unseen", unseen, model, variables, "test", vocabulary, sources=sources))
    rows.append(
        report("test-seen, clean audio", run_on(clean), model, variables, "test", vocabulary, sources=sources)
    )
    train_run = run_on(train_manifest)
    rows.append(
        report(
            "training utterances", train_run, model, variables, "test", vocabulary, args.train_limit, sources
        )
    )
    (workdir / "diagnostics.json").write_text(json.dumps({"step": step, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
