"""Cost and accuracy of integrated gradients for the top 3 considerations, in forward-pass equivalents.

    python benchmarks/explain_ig.py [--model DIR] [--data DIR] [--sample 40] [--repeats 5] [--threads 1]

Three parts, one run, one torch thread unless `--threads` says otherwise (a worker's setting):

1. The median training patient (by record size; hook_latency.py calls for the one nearest it with a
   card, as the median patient's record supports none), its top 3
   considerations, times as medians over `--repeats` runs after a warm-up, each divided by one forward
   pass of the same input:
   - shared pass, fixed steps: `engine.explain(assessment, top3)` with one interval of `--steps` nodes
     and no refinement (one forward of the interpolation batch, a backward per target);
   - the same shared forward with the three backward passes batched through `torch.func.vjp` + `vmap`
     (the alternative the module docstring rejects);
   - plain: one captum `IntegratedGradients.attribute` call per target on the model's fact embeddings,
     with the same steps, baseline and quadrature (captum's defaults otherwise), as a first integration
     would write it. The floor of any shared scheme is k(F+B)/(F+kB) over this;
   - adaptive, the default settings (what cards run).
2. `--sample` training patients (every n-th bundle, spread over the corpus) x their top 3: the adaptive
   default against fixed 64-node Gauss-Legendre (one interval, no refinement): mean steps per target,
   completeness error (median, p95, max, share above 1 %), and time per patient.
3. The same patients' patient-view cards as the services would issue them (default settings: the
   probability floor and the odds-ratio rule), each
   call's cards one shared pass under budgets of 0.2 s to 1 s: how often the budget fallback fires, the
   time, and the completeness error of the cards explained by integrated gradients.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

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
    parser.add_argument("--sample", type=int, default=40, help="patients of part 2")
    parser.add_argument("--steps", type=int, default=32, help="fixed steps of part 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from captum.attr import IntegratedGradients
    from torch.func import vjp, vmap

    from cds_plugin import Engine
    from cds_plugin.explain.inputs import prepare
    from cds_plugin.explain.integrated_gradients import (
        DEFAULTS,
        QUADRATURE,
        baseline_embeddings,
        gauss_legendre,
    )
    from cds_plugin.model.dataset import bundle_files

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serving import median_patient

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model)
    files = bundle_files(args.data)
    _, median = median_patient(args.data)
    a = engine.assess(median)
    top3 = a.considerations[:3]
    labels = [c.label_index for c in top3]
    temperature = engine.model.temperature
    steps = args.steps
    fixed = {"steps": steps, "intervals": 1, "max_steps": steps, "tolerance": 1e9}

    @torch.no_grad()
    def forward() -> None:
        engine.logits([a.encoded])

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

    def shared() -> list:  # type: ignore[type-arg]
        return engine.explain(a, top3, **fixed)

    def batched_vjp() -> torch.Tensor:
        alphas, weights = gauss_legendre(steps)
        al = torch.tensor(alphas, dtype=x.dtype)
        points = base + al[:, None, None] * (x - base)
        gates = al[:, None].expand(-1, length).clone()
        probs, pullback = vjp(probability, points, gates)
        cotangents = torch.zeros(len(labels), *probs.shape)
        for row, label in enumerate(labels):
            cotangents[row, :, label] = 1.0
        grad_x, grad_g = vmap(pullback)(cotangents)
        w = torch.tensor(weights, dtype=x.dtype)[None, :, None]
        return (((grad_x * (x - base)).sum(-1) + grad_g) * w).sum(1)

    def plain() -> list:  # type: ignore[type-arg]
        ig = IntegratedGradients(probability)
        return [
            ig.attribute(
                (x, torch.ones(1, length)),
                baselines=(base, torch.zeros(1, length)),
                target=label,
                n_steps=steps,
                method=QUADRATURE,
                return_convergence_delta=True,
            )
            for label in labels
        ]

    def adaptive() -> list:  # type: ignore[type-arg]
        return engine.explain(a, top3)

    t_forward = median_time(forward, args.repeats * 4)
    t_shared = median_time(shared, args.repeats)
    t_vjp = median_time(batched_vjp, args.repeats)
    t_plain = median_time(plain, args.repeats)
    t_adaptive = median_time(adaptive, args.repeats)
    ours, vjp_scores, theirs, adapted = shared(), batched_vjp(), plain(), adaptive()

    print(f"model {engine.version}; torch threads {torch.get_num_threads()}; {QUADRATURE}")
    print(
        f"1. median training patient by record size: {len(a.encoded)} facts; "
        f"targets {', '.join(map(str, labels))}"
    )
    print(f"   one forward pass:                            {t_forward * 1000:7.1f} ms")
    for name, t in (
        (f"shared pass, {steps} steps, backward per target", t_shared),
        (f"shared pass, {steps} steps, vmap(vjp) backward", t_vjp),
        (f"plain captum, {steps} steps, per target", t_plain),
        ("adaptive (default settings)", t_adaptive),
    ):
        print(f"   {name:<45}{t * 1000:7.1f} ms = {t / t_forward:6.1f} forward passes")
    print(
        f"   shared over plain captum: {t_plain / t_shared:.2f}x; vmap(vjp) over backward per target: "
        f"{t_shared / t_vjp:.2f}x (above 1 would favour vmap)"
    )
    for e, (attr, _), v in zip(ours, theirs, vjp_scores, strict=True):
        ours_scores = np.array([f.score for f in e.facts])
        captum_scores = (attr[0].sum(-1) + attr[1])[0].double().numpy()
        print(
            f"   target {e.target.code:>10}: "
            f"|ours - captum| max {np.abs(ours_scores - captum_scores).max():.1e}, "
            f"|ours - vmap| max {np.abs(ours_scores - v.detach().double().numpy()).max():.1e}; "
            f"completeness error {steps} steps {e.completeness_error:.2%}"
        )
    for e in adapted:
        print(
            f"   adaptive {e.target.code:>10}: {e.settings['steps_used']} steps, "
            f"completeness error {e.completeness_error:.2%}"
        )

    every = max(1, len(files) // args.sample)
    sample = engine.assess_many(files[::every][: args.sample])
    report = {}
    for name, settings in (
        ("adaptive (default)", {}),
        ("fixed 64 steps", {"steps": 64, "intervals": 1, "max_steps": 64, "tolerance": 1e9}),
    ):
        errors, used, seconds = [], [], 0.0
        for s in sample:
            started = time.perf_counter()
            out = engine.explain(s, s.considerations[:3], **settings)
            seconds += time.perf_counter() - started
            errors += [e.completeness_error for e in out]
            used += [e.settings["steps_used"] for e in out]
        report[name] = (np.array(errors), np.array(used), seconds / len(sample))
    lengths = sorted(len(s.encoded) for s in sample)
    print(
        f"2. {len(sample)} patients (every {every}th bundle; facts median {lengths[len(lengths) // 2]}, "
        f"max {lengths[-1]}) x top 3, tolerance {DEFAULTS['tolerance']:.0%}:"
    )
    for name, (errors, used, seconds) in report.items():
        print(
            f"   {name:<20} mean steps per target {used.mean():5.1f} (p95 {np.percentile(used, 95):.0f}); "
            f"completeness error median {np.median(errors):.2%}, p95 {np.percentile(errors, 95):.2%}, "
            f"max {errors.max():.2%}, above 1 % {np.mean(errors > 0.01):.0%}; "
            f"{seconds * 1000:.0f} ms per patient"
        )
    ratio = report["adaptive (default)"][1].mean() / 64
    print(f"   adaptive mean steps / fixed 64: {ratio:.2f} (target at most 0.33)")

    from cds_plugin.explain.explanation import ExplanationTimeout
    from cds_plugin.services.considerations import card_worthy
    from cds_plugin.settings import Settings

    defaults = Settings.load(environ={})
    calls = [
        (s, items)
        for s in sample
        for of_kind in (s.diagnoses, s.treatments)
        if (items := [c for c in of_kind if card_worthy(c, defaults)])
    ]
    print(
        f"3. the cards a patient-view call would issue for these patients (suggested, p >= "
        f"{defaults.min_card_probability:.2f}, odds ratio >= {defaults.min_card_odds_ratio:g}, at most "
        f"{defaults.max_cards} per service): "
        f"{len(calls)} calls, each one shared pass under a budget (default "
        f"{defaults.card_explanation_budget_s:g} s):"
    )
    for budget in (0.2, defaults.card_explanation_budget_s, 0.5, 1.0):
        fallbacks, seconds, errors = 0, [], []
        for s, items in calls:
            started = time.perf_counter()
            try:
                out = engine.explain(s, items[: defaults.max_cards], budget_s=budget)
                errors += [e.completeness_error for e in out]
            except ExplanationTimeout:
                fallbacks += 1
            seconds.append(time.perf_counter() - started)
        ms = np.array(seconds) * 1000
        print(
            f"   budget {budget:4.2f} s: fallbacks {fallbacks}/{len(calls)} ({fallbacks / len(calls):.0%}); "
            f"time median {np.median(ms):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms; completeness error of "
            f"the rest median {np.median(errors):.2%}, p95 {np.percentile(errors, 95):.2%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
