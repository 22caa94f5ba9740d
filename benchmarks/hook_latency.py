"""Latency of patient-view hook calls on the production server, integrated gradients on every card.

    .venv/bin/python benchmarks/hook_latency.py [--calls 100] [--workers 2] [--data DIR] [--compare]

Starts `cds-plugin serve` (gunicorn, `--workers` workers with 1 torch thread each, JWT required with a
pinned ES384 issuer) on loopback and calls `diagnosis-considerations` for the training patient nearest
the median record size that gets a card (the median patient's record supports none: its probabilities
are within a few percent of an empty record's odds), its prefetch exactly what the templates ask for.
The probability floor is off, so the call carries every card the odds-ratio rule lets through (at most
3), each explained by integrated gradients (the default card method, one shared pass, inside the default
`card_explanation_budget_s`) and given a page. Prints, in one run:

- end-to-end p50 / p95 / p99 / max and throughput at concurrency 1 and 4 (`--calls` each), the errors;
- how often the card attributions fell back to attention x gradient (target 0), from /metrics;
- with `--compare`, the same on a second server with `card_explanation_method=attention_gradient`, so
  the cost of integrated gradients on the cards reads as a ratio measured on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import (
    DEFAULT_DATA,
    Caller,
    carded_median_patient,
    carded_patient_line,
    counter,
    percentile,
    prefetch_of,
    report,
    run,
    start_server,
)

from cds_plugin.sandbox.keys import ClientKey


def measure(body: dict, workers: int, calls: int, method: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        key = ClientKey.generate()
        _, jwks_file = key.write(data_dir / "keys")
        env = {"CDS_PLUGIN_CARD_EXPLANATION_METHOD": method} if method else {}
        proc, base = start_server(data_dir, workers, jwks_file, env)
        try:
            caller = Caller(base, body, key)
            run(caller, 20, 2)  # warm-up: the first calls of each worker pay lazy set-up
            results = {}
            for concurrency in (1, 4):
                samples, wall = run(caller, calls, concurrency)
                results[concurrency] = samples
                report(f"  concurrency {concurrency}", samples, wall)
            fallbacks = sum(counter(base, "cds_plugin_card_explanation_fallbacks_total").values())
            explained = counter(base, "cds_plugin_explanations_total")
            print(
                f"  cards per call {caller.cards}; errors {len(caller.errors)}"
                + (f" e.g. {caller.errors[0]}" if caller.errors else "")
                + f"; explanations {explained}; budget fallbacks {fallbacks:.0f} of {20 + 2 * calls} calls",
                flush=True,
            )
            return {"results": results, "fallbacks": fallbacks, "errors": len(caller.errors)}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--calls", type=int, default=100, help="calls per concurrency level")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="also measure attention x gradient on cards")
    args = parser.parse_args()

    record_bytes, median, proposed = carded_median_patient(args.data)
    patient_id, prefetch = prefetch_of(median)
    body = {
        "hook": "patient-view",
        "fhirServer": "https://ehr.bench.example/fhir",  # named, never called: the prefetch is complete
        "context": {"userId": "Practitioner/bench", "patientId": patient_id},
        "prefetch": prefetch,
    }
    print(
        f"{carded_patient_line(record_bytes, median, proposed)}, request body "
        f"{len(json.dumps(body)) / 1024:.0f} KiB; gunicorn {args.workers} workers, 1 torch thread each; "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    print("cards explained by integrated gradients (the default):", flush=True)
    ig = measure(body, args.workers, args.calls, None)
    if args.compare:
        print("cards explained by attention x gradient:", flush=True)
        cheap = measure(body, args.workers, args.calls, "attention_gradient")
        for c in (1, 4):
            ratio = percentile(ig["results"][c], 0.95) / percentile(cheap["results"][c], 0.95)
            print(f"p95 integrated gradients / attention x gradient at concurrency {c}: {ratio:.2f}x")
    p95 = {c: percentile(ig["results"][c], 0.95) for c in (1, 4)}
    met = p95[1] <= 250 and p95[4] <= 600 and ig["errors"] == 0 and ig["fallbacks"] == 0
    print(
        "targets (p95 <= 250 ms at c=1, <= 600 ms at c=4, 0 errors, 0 fallbacks): "
        + ("met" if met else "NOT met")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
