"""The one reference-time rule: the time T at which a patient's record is read.

T is what ages, "how long ago" and "already documented" are computed at. It is the `as_of` the caller
gives (then the record is cut there: later facts dropped, statuses read as of then, see as_of.py), else
the time of the call, now in UTC (nothing is cut). Every entry point takes T from `reference_time()`,
once per call: the readers (`read_record`, `read_records`, `read_prefetch`, `read_ndjson`), so the Engine
(`assess`, `explain`), `cds-plugin assess` and `explain` (`--as-of`), and every hook, which passes no
`as_of` (a hook fires while the clinician has the patient open: now). The same input at the same T gives
the same probabilities everywhere (docs/fhir-input.md, "Reference time").
"""

from __future__ import annotations

from datetime import date, datetime

from cds_plugin.fhir.times import to_cut, utc_now


def reference_time(as_of: datetime | date | None = None) -> datetime:
    """T for a read: `as_of` as an aware UTC datetime (a date means the end of that day), else now."""
    return to_cut(as_of) if as_of is not None else utc_now()
