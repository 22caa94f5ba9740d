"""Cost of integrated gradients for the top 3 considerations of a median patient, as a ratio to one
forward pass of the same input, beside a plain per-target captum call measured in the same run.

    python benchmarks/explain_ig.py [--model DIR] [--data DIR] [--patients 40] [--repeats 5] [--threads 1]

"Median patient": the one of median input length among the first `--patients` bundles under `--data`.
Ours: `engine.explain(assessment, top3)` at its default settings (one forward of the interpolation
batch for the three targets, a backward per target, Gauss-Legendre steps). Plain: one captum
`IntegratedGradients.attribute` call per target on the model's fact embeddings, with the same steps,
baseline and quadrature and captum's defaults otherwise (no internal batching limit, its own
convergence delta), as a first integration would write it. Times are medians over `--repeats` runs
after one warm-up run each; one torch thread unless `--threads` says otherwise (a worker's setting).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def median_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the model shipped in the package)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/synthea/train"))
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from captum.attr import IntegratedGradients

    from cds_plugin import Engine
    from cds_plugin.explain.inputs import prepare
    from cds_plugin.explain.integrated_gradients import DEFAULTS, QUADRATURE, baseline_embeddings
    from cds_plugin.model.dataset import bundle_files

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model)
    files = bundle_files(args.data)
    files = [f for f in files if f.name.endswith((".json", ".json.gz"))][: args.patients]
    assessments = engine.assess_many(files)
    assessments.sort(key=lambda a: len(a.encoded))
    a = assessments[len(assessments) // 2]
    top3 = a.considerations[:3]
    temperature = engine.model.temperature
    steps = DEFAULTS["steps"]

    @torch.no_grad()
    def forward() -> None:
        engine.logits([a.encoded])

    def ours() -> list:  # type: ignore[type-arg]
        return engine.explain(a, top3, recompute_above=1.0)  # fixed steps, as the plain call

    inp = prepare(engine, a)
    x = inp.embeddings()
    base = baseline_embeddings(inp, DEFAULTS["baseline"])
    batch = inp.batch()
    mask, bag = batch.mask, batch.bag()
    length = x.shape[1]

    def probability(embeds: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        n = embeds.shape[0]
        logits = engine.network.forward_embeds(embeds, mask.expand(n, -1), bag.expand(n), gates)
        return torch.sigmoid(logits / temperature)

    def plain() -> list:  # type: ignore[type-arg]
        ig = IntegratedGradients(probability)
        return [
            ig.attribute(
                (x, torch.ones(1, length)),
                baselines=(base, torch.zeros(1, length)),
                target=c.label_index,
                n_steps=steps,
                method=QUADRATURE,
                return_convergence_delta=True,
            )
            for c in top3
        ]

    t_forward = median_time(forward, args.repeats * 4)
    t_ours = median_time(ours, args.repeats)
    t_plain = median_time(plain, args.repeats)
    explanations = ours()
    plain_results = plain()

    print(f"model {engine.version}; torch threads {torch.get_num_threads()}; steps {steps} ({QUADRATURE})")
    print(
        f"median patient of {len(assessments)}: {len(a.encoded)} facts; "
        f"targets: {', '.join(c.code for c in top3)}"
    )
    print(f"one forward pass:             {t_forward * 1000:8.1f} ms")
    print(f"IG top 3, ours:               {t_ours * 1000:8.1f} ms = {t_ours / t_forward:6.1f} forward passes")
    print(
        f"IG top 3, plain per target:   {t_plain * 1000:8.1f} ms = {t_plain / t_forward:6.1f} forward passes"
    )
    print(f"speed-up over plain: {t_plain / t_ours:.2f}x")
    for e, (attr, delta) in zip(explanations, plain_results, strict=True):
        d = e.f_x - e.f_baseline
        plain_error = abs(float(delta)) / max(abs(d), 1e-3)
        same = abs(float(sum(a.sum() for a in attr)) - sum(ev.score for ev in e.evidence))
        print(
            f"  {e.target.code:>12}: completeness error ours {e.completeness_error:.2%} "
            f"({e.settings['steps_used']} steps), plain {plain_error:.2%}; |sum difference| {same:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
