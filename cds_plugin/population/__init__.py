"""Population worklists: score a whole population from FHIR Bulk Data on Dask, explain the top of the list.

A hook call serves one patient; data-quality teams ask which of their patients most likely have a
condition or treatment the record does not document. `cds-plugin worklist` answers from a Bulk Data
export (a folder of NDJSON, or a FHIR server it exports from) with a ranked, explained worklist. It
wires the core (fhir, model, explain through the Engine API) and nothing in the core imports it.

- `source`: the export's NDJSON files; `bulk_client` and `authorization`: Bulk Data client, static
  token or SMART Backend Services;
- `grouping`: the partitioned shuffle by patient; `scoring`: the tasks that score and explain;
- `cluster`: LocalCluster or an existing scheduler, the Engine loaded once per worker;
- `manifest`: what a run finished (resume, refusing mixed runs); `pipeline`: the stages in order;
- `worklist`, `evidence`, `report`: the outputs; `command`: the command line.

See docs/population.md.
"""
