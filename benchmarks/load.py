"""End-to-end load on the production server: latency percentiles, throughput, worker memory growth.

    .venv/bin/python benchmarks/load.py [--calls 300] [--soak 5000] [--workers 2] [--data DIR]

Starts `cds-plugin serve` (gunicorn, production settings, JWT required with a pinned ES384 issuer) on
loopback, then calls `diagnosis-considerations` (patient-view) for the training patient nearest the
median record size that gets a card (benchmarks/serving.py): the prefetch carries the patient's whole
record, every resource, compact JSON (the resources the templates do not ask for under one extra key
the service does not read), the worst an over-sending EHR would post. Every call gets every card the
odds-ratio rule lets through (probability floor off, at most three), each explained and given a page.
Each call is signed with a fresh token (before the clock starts: signing is the EHR's cost). Prints, in
one run:

- p50 / p95 / p99 / max latency and throughput at concurrency 1 and 4 (`--calls` each), and at
  concurrency 1 with only what the prefetch templates ask for; the errors, which must be none;
- the bare model forward pass on the same input in this process (1 torch thread), so the ratio of a call
  to a forward pass survives machine noise;
- a soak of `--soak` calls at concurrency 4: resident memory of every worker after the warm-up and at the
  end, and the growth in per cent (target under 5 %);
- the after-response work (integrated gradients for the pages) done and skipped, from /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import (
    DEFAULT_DATA,
    KEYS,
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

from cds_plugin.sandbox.fhir_store import FhirStore
from cds_plugin.sandbox.keys import ClientKey


def whole_record(path: Path, requested: dict) -> dict:
    """The requested prefetch plus every other resource of the patient's record under one more key (a
    searchset the service does not read): a body of the record's whole size, as an EHR that over-sends
    would post it."""
    store = FhirStore.load(path)
    others = [
        {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r}
        for rtype in sorted(store.types())
        if rtype not in KEYS
        for r in store.all(rtype)
    ]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(others), "entry": others}
    return {**requested, "other": bundle}


def worker_pids(arbiter: int) -> list[int]:
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    return sorted(int(p) for p in children)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_forward_ms(median: Path, repeat: int = 30) -> float:
    """The model's forward pass alone on the same patient, 1 torch thread, in this process."""
    import torch

    from cds_plugin.model.engine import Engine

    torch.set_num_threads(1)
    engine = Engine.load()
    encoded, _ = engine.encode(engine.record_of(median))
    samples = []
    for i in range(repeat + 3):
        started = time.perf_counter()
        engine.logits([encoded])
        if i >= 3:
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def soak(arbiter: int, caller: Caller, calls: int, warm_calls: int, chunks: int = 10) -> None:
    """`calls` more calls at concurrency 4 in chunks; each worker's RSS after every chunk, so a leak
    (steady growth) shows apart from allocator noise (a plateau)."""
    before = {pid: rss_mib(pid) for pid in worker_pids(arbiter)}
    trajectory: dict[int, list[float]] = {pid: [] for pid in before}
    samples: list[float] = []
    started = time.perf_counter()
    size = max(1, calls // chunks)
    done = 0
    while done < calls:
        n = min(size, calls - done)
        samples += run(caller, n, 4)[0]
        done += n
        for pid in trajectory:
            trajectory[pid].append(rss_mib(pid) if Path(f"/proc/{pid}").exists() else float("nan"))
    report("soak (c=4)", samples, time.perf_counter() - started)
    for pid, rss in trajectory.items():
        growth = 100 * (rss[-1] - before[pid]) / before[pid]
        path = " ".join(f"{r:.0f}" for r in rss)
        print(
            f"worker rss MiB after {warm_calls} calls {before[pid]:.0f} -> every {size} calls: {path} "
            f"({growth:+.1f} % over {calls} calls)"
        )
    replaced = set(worker_pids(arbiter)) - set(before)
    if replaced:
        print(f"workers replaced during the soak (not expected): {len(replaced)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--calls", type=int, default=300, help="calls per concurrency level")
    parser.add_argument("--soak", type=int, default=5000, help="calls in the memory soak (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    record_bytes, median, proposed = carded_median_patient(args.data)
    patient_id, requested = prefetch_of(median)
    context = {"userId": "Practitioner/bench", "patientId": patient_id}
    # fhirServer is named but never called: the prefetch is complete
    base_body = {"hook": "patient-view", "fhirServer": "https://ehr.bench.example/fhir", "context": context}
    body = {**base_body, "prefetch": whole_record(median, requested)}
    small = {**base_body, "prefetch": requested}
    print(
        f"{carded_patient_line(record_bytes, median, proposed)}; request body "
        f"{len(json.dumps(body)) / 1024:.0f} KiB with the whole record in the prefetch, "
        f"{len(json.dumps(small)) / 1024:.0f} KiB with what the prefetch templates ask for; "
        f"gunicorn {args.workers} workers, 1 torch thread each; {os.cpu_count()} CPUs",
        flush=True,
    )
    forward = bare_forward_ms(median)
    print(f"bare model forward pass, same input, 1 thread: {forward:.1f} ms (median of 30)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        key = ClientKey.generate()
        _, jwks_file = key.write(data_dir / "keys")
        proc, base = start_server(data_dir, args.workers, jwks_file)
        try:
            caller = Caller(base, body, key)
            run(caller, 20, 1)  # warm-up: first calls pay lazy imports and allocator growth
            results = {}
            for concurrency in (1, 4):
                samples, wall = run(caller, args.calls, concurrency)
                results[concurrency] = samples
                report(f"concurrency {concurrency}", samples, wall)
            templates_only = Caller(base, small, key)
            samples, wall = run(templates_only, args.calls, 1)
            report("c 1, templates", samples, wall)
            caller.errors += templates_only.errors
            p50 = percentile(results[1], 0.5)
            print(
                f"call p50 / bare forward pass at concurrency 1: {p50 / forward:.1f}x; "
                f"cards per call {caller.cards}"
            )
            if args.soak:
                soak(proc.pid, caller, args.soak, warm_calls=3 * args.calls + 20)
            background = counter(base, "cds_plugin_background_explanations_total")
            print(f"after-response integrated gradients: {background}")
            errors = caller.errors
            print(f"errors: {len(errors)}" + (f" e.g. {errors[0]}" if errors else ""))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
