"""Benchmark: FHIR bundle -> PatientRecord -> linearization, against full R4B validation of the bundle.

Usage (from the repository root):

    python benchmarks/fhir_parse.py                 # whole training corpus
    python benchmarks/fhir_parse.py --limit 100     # first 100 bundles in manifest rand_rank order

Prints, for the median training bundle (by uncompressed size), the median time of
`fhir.resources.R4B.bundle.Bundle.model_validate(json.loads(raw))` and of
`linearize(read_record(raw))`, measured alternately in one run, and their ratio (target: at least 5x);
then bundles per second over the corpus (file read, gunzip, parse, linearize) and peak memory.
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import json
import os
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_plugin.fhir import linearize, read_record  # noqa: E402


def default_data() -> Path:
    return Path(os.environ.get("CDS_PLUGIN_TRAIN_DATA", ROOT.parent / "shared/data/synthea/train"))


def corpus(data: Path) -> list[tuple[Path, int, int]]:
    """(path, uncompressed bytes, rand_rank) of every training bundle present, in rand_rank order."""
    manifest = data.parent / "manifest-train.csv"
    rows = []
    if manifest.exists():
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                path = data / row["file"]
                if path.exists():
                    rows.append((path, int(row["bytes_uncompressed"]), int(row["rand_rank"])))
    else:
        for i, path in enumerate(sorted(data.rglob("*.json.gz"))):
            rows.append((path, len(gzip.open(path).read()), i))
    rows.sort(key=lambda r: r[2])
    return rows


def side_by_side(raw: bytes, repeat: int, validation: str) -> tuple[float, float]:
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(json.loads(raw))  # warm up both (imports, caches)
    linearize(read_record(raw, validation=validation))
    full, ours = [], []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        Bundle.model_validate(json.loads(raw))
        full.append(time.perf_counter() - start)
        gc.collect()
        start = time.perf_counter()
        linearize(read_record(raw, validation=validation))
        ours.append(time.perf_counter() - start)
    return statistics.median(full), statistics.median(ours)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="training bundles folder")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N bundles")
    parser.add_argument("--repeat", type=int, default=9, help="side-by-side repetitions (median taken)")
    parser.add_argument("--validation", choices=("fast", "full"), default="fast")
    args = parser.parse_args(argv)

    rows = corpus(args.data)
    if not rows:
        print(f"no training bundles under {args.data}", file=sys.stderr)
        return 2
    by_size = sorted(rows, key=lambda r: r[1])
    median_path, median_bytes, _ = by_size[len(by_size) // 2]
    raw = gzip.open(median_path).read()
    entries = len(json.loads(raw).get("entry", []))
    full, ours = side_by_side(raw, args.repeat, args.validation)
    print(f"median bundle: {median_path.name} ({median_bytes / 1024:.0f} KiB, {entries} entries)")
    print(f"  Bundle.model_validate (R4B, incl. json.loads): {full * 1000:8.1f} ms")
    print(f"  read_record + linearize ({args.validation}):       {ours * 1000:8.1f} ms")
    print(f"  speed-up: {full / ours:.1f}x (target >= 5x)")

    tracemalloc.start()
    linearize(read_record(raw, validation=args.validation))
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak Python allocation for that bundle: {traced_peak / 2**20:.1f} MiB (input not counted)")

    chosen = rows[: args.limit] if args.limit else rows
    total_bytes = sum(r[1] for r in chosen)
    segments = 0
    start = time.perf_counter()
    for path, _, _ in chosen:
        segments += len(linearize(read_record(path, validation=args.validation)).segments)
    elapsed = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"corpus: {len(chosen)} bundles, {total_bytes / 2**20:.0f} MiB uncompressed, {elapsed:.1f} s: "
        f"{len(chosen) / elapsed:.1f} bundles/s, {total_bytes / 2**20 / elapsed:.1f} MiB/s "
        f"(file read + gunzip + parse + linearize, one process), {segments / len(chosen):.0f} segments/bundle"
    )
    print(f"peak RSS of this process: {peak_rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
