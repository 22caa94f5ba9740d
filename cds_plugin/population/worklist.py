"""The worklist: every partition's rows in one ranked table, evidence on the top rows, Parquet and CSV.

One row per patient and consideration at or above its threshold and not already documented, ranked by
calibrated probability (ties by patient, kind and code, so the order is reproducible). Columns:
`patient` (the FHIR reference), `code`, `display`, `kind`, `probability`, `threshold`, `rank`, then for
the top N rows the top-3 integrated-gradients evidence as `evidence_K_reference`, `_what`, `_value`,
`_date` and `_attribution` (K = 1..3; empty below the top N).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cds_plugin.population.scoring import (
    EVIDENCE_SCHEMA,
    PATIENT_SCHEMA,
    ROW_SCHEMA,
    patients_file,
    score_file,
)

KEY = ["patient", "kind", "code"]
EVIDENCE_COLUMNS = [name for name in EVIDENCE_SCHEMA.names if name not in KEY]
COLUMNS = ["patient", "code", "display", "kind", "probability", "threshold", "rank", *EVIDENCE_COLUMNS]
WORKLIST_PARQUET = "worklist.parquet"
WORKLIST_CSV = "worklist.csv"


def ranked_rows(parts_dir: Path, partitions: Iterable[int]) -> pa.Table:
    """All scored rows, sorted and ranked (1 = most likely)."""
    tables = [pq.read_table(score_file(str(parts_dir), p), schema=ROW_SCHEMA) for p in sorted(partitions)]
    table = pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()
    table = table.sort_by(
        [
            ("probability", "descending"),
            ("patient", "ascending"),
            ("kind", "ascending"),
            ("code", "ascending"),
        ]
    )
    return table.append_column("rank", pa.array(range(1, table.num_rows + 1), type=pa.int64()))


def patients_table(parts_dir: Path, partitions: Iterable[int]) -> pa.Table:
    """One row per patient read: scored or unreadable (see scoring.PATIENT_SCHEMA)."""
    tables = [
        pq.read_table(patients_file(str(parts_dir), p), schema=PATIENT_SCHEMA) for p in sorted(partitions)
    ]
    return pa.concat_tables(tables) if tables else PATIENT_SCHEMA.empty_table()


def top_keys(table: pa.Table, n: int) -> list[tuple[str, str, str]]:
    """(patient, kind, code) of the first n rows."""
    head = table.slice(0, max(n, 0)).select(KEY).to_pylist()
    return [(r["patient"], r["kind"], r["code"]) for r in head]


def with_evidence(table: pa.Table, evidence_files: Iterable[Path], n: int) -> pa.Table:
    """The ranked rows with the evidence columns, filled for the top n rows where an explanation exists."""
    wanted = set(top_keys(table, n))
    pieces = [pq.read_table(path, schema=EVIDENCE_SCHEMA) for path in evidence_files]
    evidence = pa.concat_tables(pieces) if pieces else EVIDENCE_SCHEMA.empty_table()
    if evidence.num_rows:
        keep, seen = [], set()
        for i, row in enumerate(evidence.select(KEY).to_pylist()):
            key = (row["patient"], row["kind"], row["code"])
            if key in wanted and key not in seen:  # the first explanation of a row wins
                seen.add(key)
                keep.append(i)
        evidence = evidence.take(pa.array(keep, type=pa.int64()))
    joined = table.join(evidence, keys=KEY, join_type="left outer")
    joined = joined.sort_by([("rank", "ascending")])
    return joined.select(COLUMNS)


def write_outputs(table: pa.Table, out_dir: Path) -> tuple[Path, Path]:
    """worklist.parquet and worklist.csv, each written under a temporary name and renamed."""
    paths = []
    for name, write in (
        (WORKLIST_PARQUET, lambda t, p: pq.write_table(t, p)),
        (WORKLIST_CSV, lambda t, p: pacsv.write_csv(t, p)),
    ):
        path = out_dir / name
        tmp = path.with_name(f".tmp-{name}-{uuid.uuid4().hex[:8]}")
        try:
            write(table, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths[0], paths[1]


def counts_by_consideration(table: pa.Table) -> list[dict[str, object]]:
    """Rows per (kind, code, display), most frequent first."""
    if table.num_rows == 0:
        return []
    grouped = table.group_by(["kind", "code", "display"]).aggregate(
        [("patient", "count"), ("probability", "mean")]
    )
    rows = grouped.to_pylist()
    rows.sort(key=lambda r: (-r["patient_count"], r["kind"], r["code"]))
    return [
        {"kind": r["kind"], "code": r["code"], "display": r["display"], "rows": r["patient_count"],
         "mean_probability": r["probability_mean"]}
        for r in rows
    ]  # fmt: skip


def histogram(table: pa.Table, bins: int = 20) -> list[int]:
    """Rows per probability bin of width 1/bins (the last bin includes 1.0)."""
    counts = [0] * bins
    if table.num_rows:
        index = pc.min_element_wise(pc.floor(pc.multiply(table["probability"], bins)), bins - 1)
        for value in index.to_pylist():
            counts[int(value)] += 1
    return counts
