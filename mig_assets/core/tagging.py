"""Per-sample tag rows, whatever produced the tags; the ``imported`` backend reads annotations.

Every sample of a shard gets exactly one row with a status: ``ok`` (tags present, possibly
none after normalization), ``no_annotation`` (imported backend, the record carries no tags) or
``failed`` (a tagger could not produce valid tags; excluded downstream, never given defaults).
"""

from __future__ import annotations

import pyarrow as pa

from mig_assets.core.tags import normalize_tags

TAG_ROW_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("shard", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("surface_tags", pa.list_(pa.string())),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)


def imported_tag_rows(samples: pa.Table, shard: str) -> pa.Table:
    """Tag rows from ``imported_tags`` of the shard's kept samples (columns sample_id, imported_tags)."""
    rows = []
    for sample_id, surface in zip(samples.column("sample_id").to_pylist(), samples.column("imported_tags").to_pylist()):
        rows.append(
            {
                "sample_id": sample_id,
                "shard": shard,
                "tags": normalize_tags(surface) if surface is not None else [],
                "surface_tags": surface or [],
                "status": "ok" if surface is not None else "no_annotation",
                "reason": "" if surface is not None else "the record carries no annotation.instag.content",
                "backend": "imported",
                "model": "",
                "prompt_version": "",
            }
        )
    return pa.Table.from_pylist(rows, schema=TAG_ROW_SCHEMA)
