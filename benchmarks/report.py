"""Publish benchmarks/results/*.json as markdown tables in benchmarks/README.md's results block.

    .venv/bin/python benchmarks/report.py            # rewrite benchmarks/README.md between the results markers
    .venv/bin/python benchmarks/report.py --print    # only print the markdown

quality.py and overhead.py call this at the end of a full run; `make bench` regenerates everything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

START, END = "<!-- results:start -->", "<!-- results:end -->"
README = common.ROOT / "benchmarks" / "README.md"


def _value(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4f}" if seeds == 1 else f"{mean:.4f} ± {std:.4f}"


def quality_table(data: dict) -> str:
    seeds = data["seeds"]
    rows = []
    for r in data["results"]:
        passed = {True: "yes", False: "**no**", None: "–"}[r["pass"]]
        if seeds > 1 and r["pass"] is not None:
            passed += f" ({r['seeds_passing']}/{seeds} seeds)"
        base = [f"{_value(v['mean'], v['std'], seeds)} {label}" for label, v in r["baselines"].items()]
        if r.get("reference"):
            base.append(f"{r['reference']['mean']:.4f} `{r['reference']['experiment']}`")
        rows.append([f"`{r['experiment']}`", r["metric"] + (" ↓" if r["lower_is_better"] else ""),
                     _value(r["dlpipe_mean"], r["dlpipe_std"], seeds), "<br>".join(base) or "–", r["promise"],
                     passed, f"{r['epochs_mean']:.0f}", f"{r['fit_seconds_mean']:.1f}"])
    if seeds == 1:
        title = f"Test-set quality at the presets' seed ({', '.join(map(str, data['seed_values']))}), baselines on the same split (↓: lower is better):"
    else:
        title = (f"Test-set quality over seeds 0..{seeds - 1} (each seed draws a new split and initialisation), "
                 "mean ± std, baselines on the same splits; pass = the mean keeps the promise:")
    return title + "\n\n" + common.table(
        ["experiment", "metric", "dlpipe", "baselines", "promise", "pass", "epochs", "fit s"],
        rows, markdown=True)


def overhead_table(data: dict) -> str:
    rows = [[f"`{r['case']}`", r["batches_per_epoch"], f"{r['dlpipe_s_per_epoch'] * 1000:.1f} ms",
             f"{r['plain_s_per_epoch'] * 1000:.1f} ms", f"{r['ratio']:.2f}", f"≤ {data['target_ratio']:.2f}",
             "yes" if r["ratio"] <= data["target_ratio"] else "**no**"]
            for r in data["results"]]
    s = data["settings"]
    title = (f"Training time per epoch (validation excluded), dlpipe (`pipelines.training.fit.fit`) vs a hand-written "
             f"PyTorch loop: same net and init, data, batch size and optimiser, {s['threads']} thread; {s['epochs']} "
             f"epochs less {s['warmup_epochs']} warm-up, {s['repeats']} alternating dlpipe/plain pairs, medians:")
    return title + "\n\n" + common.table(
        ["case", "batches/epoch", "dlpipe", "plain PyTorch", "ratio", "target", "met"], rows, markdown=True)


def provenance(data: dict, what: str) -> str:
    m = data["machine"]
    commit = (m.get("commit") or "unknown") + (" + local changes" if m.get("dirty") else "")
    load = m.get("load_average_1m")
    return (f"{what} (`{data['command'].strip()}`): {m['cpu']} ({m['cpus_usable']} CPUs), torch {m['torch']}, "
            f"Lightning {m['lightning']}, {m['date'][:10]}, commit {commit}"
            + (f", load average {load:.1f} at the start." if load is not None else "."))


def render() -> str:
    parts, notes = [], []
    for name, what, to_markdown in (("quality.json", "Quality", quality_table),
                                    ("quality_seeds.json", "Seed spread", quality_table),
                                    ("overhead.json", "Overhead", overhead_table)):
        data = common.load_json(name)
        if data:
            parts.append(to_markdown(data))
            notes.append(provenance(data, what))
    if not parts:
        return "_Run `make bench` to fill this table._"
    notes.append("Regenerate with `make bench` (quality.py, then overhead.py; each rewrites this block through "
                 "benchmarks/report.py; the seed spread is `quality.py --seeds 5`); raw numbers in benchmarks/results/.")
    return "\n\n".join(parts + ["\n".join(f"- {n}" for n in notes)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--print", action="store_true", help="print the markdown instead of editing benchmarks/README.md")
    args = parser.parse_args(argv)
    block = render()
    if args.print:
        print(block)
        return 0
    text = README.read_text()
    if START not in text or END not in text:
        print(f"{README.relative_to(common.ROOT)} has no {START} ... {END} block; nothing written", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{block}\n{END}{tail}")
    print(f"updated the results block in {README.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
