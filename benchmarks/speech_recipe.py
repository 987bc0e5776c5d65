"""Summarise real-speech runs (``python -m train main --data espeak``) as the rows of benchmarks/speech_recipe.md.

    python benchmarks/speech_recipe.py runs/speech [more workdirs ...]

Prints, per workdir: the settings that differ from the speech preset, steps, training time, test WER/CER per
condition (seen/unseen speakers x offline/streaming x greedy/beam; per text source beside, with each source's
out-of-vocabulary rate) and the learning curve (dev WER against training minutes), from the workdir's
results.json and config.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _flat(blob: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in blob.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def summarise(workdir: Path) -> str:
    from streamformer.train.config import preset, to_dict

    results = json.loads((workdir / "results.json").read_text())
    config = _flat(json.loads((workdir / "config.json").read_text()))
    reference = _flat(json.loads(json.dumps(to_dict(preset("speech")))))  # tuples as lists, as stored
    changed = {
        k: v
        for k, v in config.items()
        if reference.get(k) != v and not k.startswith(("data.train", "data.dev"))
    }
    changed.pop("data.test", None)
    lines = [f"### {workdir.name}", "", f"- settings beyond the speech preset: `{changed or 'none'}`"]
    lines.append(f"- {results['steps']} steps in {results['train_seconds'] / 60:.1f} min of training")
    names = sorted({name for r in results["test"] for name in r.get("sources", {})})
    oov = {
        name: results["corpus"].get("test-seen", {}).get("sources", {}).get(name, {}).get("oov_rate")
        for name in names
    }
    lines += [
        "",
        "| speakers | mode | search | WER | CER | utterances |"
        + "".join(f" {name} WER / CER (OOV {100 * (oov[name] or 0):.1f} %) |" for name in names),
        "| --- | --- | --- | --- | --- | --- |" + " --- |" * len(names),
    ]
    for r in results["test"]:
        by_source = r.get("sources", {})
        lines.append(
            f"| {r['speakers']} | {r['mode']} | {r['search']} | {100 * r['wer']:.1f} % | {100 * r['cer']:.1f} % "
            f"| {r['utterances']} |"
            + "".join(
                f" {100 * by_source[n]['wer']:.1f} / {100 * by_source[n]['cer']:.1f} % |"
                if n in by_source
                else " |"
                for n in names
            )
        )
    if results.get("curve"):
        lines += ["", "learning curve (dev, greedy offline): " + ", ".join(
            f"{p['train_minutes']:.1f} min {100 * p['wer']:.0f} % WER / {100 * p['cer']:.0f} % CER"
            for p in results["curve"]
        )]  # fmt: skip
    t = results["transcribe"]
    lines += ["", f"- transcribed `{Path(t['file']).name}`: reference \"{t['reference']}\", "
              f"hypothesis \"{t['hypothesis']}\""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    for workdir in parser.parse_args().workdirs:
        print(summarise(workdir))
        print()


if __name__ == "__main__":
    main()
