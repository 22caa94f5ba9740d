"""Latency of `engine.assess` on a median training patient, and of the bare forward pass, side by side.

    .venv/bin/python benchmarks/model_latency.py [--model DIR] [--data DIR] [--threads 1] [--repeat 30]

Prints the median patient's size, then median and p95 milliseconds for: reading + listing + encoding the
facts (FHIR in), the forward pass alone, and the whole `assess`; and the forward pass at other fact
counts with the same network (the cap in docs/model-card.md uses these).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cds_plugin.model.dataset import bundle_files
from cds_plugin.model.engine import Engine
from cds_plugin.model.facts import EncodedFacts

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea" / "train"


def timed(fn, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model)
    files = sorted(bundle_files(args.data), key=lambda p: p.stat().st_size)
    median_file = files[len(files) // 2]
    raw = median_file.read_bytes()
    print(f"model {engine.version}, {args.threads} torch thread(s), at most {engine.model.max_facts} facts")
    print(f"median patient: {median_file.name} ({len(raw) / 1024:.0f} KiB on disk)")

    record = engine.record_of(median_file)
    encoded, _ = engine.encode(record)
    print(f"input: {len(encoded)} positions (facts), {encoded.dropped} beyond the cap")
    fhir = timed(lambda: engine.encode(engine.record_of(median_file)), args.repeat)
    forward = timed(lambda: engine.logits([encoded]), args.repeat)
    whole = timed(lambda: engine.assess(median_file), args.repeat)
    print(f"{'step':<34}{'median ms':>10}{'p95 ms':>10}")
    for name, (med, p95) in (
        ("read + linearize + encode", fhir),
        ("forward pass", forward),
        ("assess (all)", whole),
    ):
        print(f"{name:<34}{med:>10.1f}{p95:>10.1f}")
    print(f"assess / forward ratio: {whole[0] / forward[0]:.2f}")

    print("\nforward pass by fact count (this network, the patient's facts repeated or cut):")
    for length in (128, 256, 512, 1024):
        index = np.resize(np.arange(len(encoded)), length)
        sized = EncodedFacts(
            encoded.codes[index],
            encoded.values[index],
            encoded.times[index],
            encoded.kinds[index],
            encoded.concepts[index],
            index,
        )
        med, p95 = timed(lambda sized=sized: engine.logits([sized]), args.repeat)
        print(f"  {length:>5} facts: median {med:6.1f} ms, p95 {p95:6.1f} ms")


if __name__ == "__main__":
    main()
