"""`report.html`: one self-contained page (no CDN, no network: styles, script and data inline) to review
the worklist: the ranked table with filters, counts per consideration, a histogram of probabilities,
and what was not read and why. The table holds the first `MAX_TABLE_ROWS` rows; the files hold all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa

from cds_plugin.population.worklist import counts_by_consideration, histogram

MAX_TABLE_ROWS = 5000
MAX_DETAILS = 100
_TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Unread:
    """One reason something was not read: a count and, where useful, examples (file and line, ...)."""

    what: str
    count: int
    details: list[str] = field(default_factory=list)
    resources: bool = True  # counts resources (not files, patients or server messages)

    def to_context(self) -> dict[str, Any]:
        shown = self.details[:MAX_DETAILS]
        return {
            "what": self.what,
            "count": self.count,
            "details": shown,
            "more": max(self.count - len(shown), 0) if shown else 0,
        }


def _histogram_svg(counts: list[int]) -> dict[str, Any]:
    top = max(counts) if counts and max(counts) > 0 else 1
    width = 600 / len(counts)
    bars = []
    for i, n in enumerate(counts):
        height = 125 * n / top
        bars.append(
            {
                "x": round(30 + i * width + 1, 1),
                "y": round(140 - height, 1),
                "width": round(width - 2, 1),
                "height": round(height, 1),
                "count": n,
                "label": f"{i / len(counts):.2f}–{(i + 1) / len(counts):.2f}",
            }
        )
    ticks = [{"x": round(30 + 600 * t / 4, 1), "label": f"{t / 4:.2f}"} for t in range(5)]
    return {"bars": bars, "ticks": ticks, "max": max(counts) if counts else 0}


def _table_rows(table: pa.Table) -> list[dict[str, Any]]:
    out = []
    for row in table.slice(0, MAX_TABLE_ROWS).to_pylist():
        evidence = []
        for k in (1, 2, 3):
            reference = row.get(f"evidence_{k}_reference")
            if reference:
                evidence.append(
                    {
                        "reference": reference,
                        "what": row.get(f"evidence_{k}_what") or "",
                        "value": row.get(f"evidence_{k}_value") or "",
                        "date": row.get(f"evidence_{k}_date") or "",
                        "attribution": row.get(f"evidence_{k}_attribution") or 0.0,
                    }
                )
        out.append(
            {
                "rank": row["rank"],
                "patient": row["patient"],
                "code": row["code"],
                "display": row["display"],
                "kind": row["kind"],
                "probability": row["probability"],
                "threshold": row["threshold"],
                "evidence": evidence,
            }
        )
    return out


def render_report(table: pa.Table, summary: dict[str, Any], unread: list[Unread]) -> str:
    """The page's HTML. `summary` holds the header and card figures (see the template)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    rows = _table_rows(table)
    return env.get_template("report.html").render(
        summary=summary,
        counts=counts_by_consideration(table),
        histogram=_histogram_svg(histogram(table)),
        unread=[u.to_context() for u in unread if u.count],
        table_rows=rows,
        truncated=table.num_rows > len(rows),
    )
