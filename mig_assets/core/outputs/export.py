"""Selection exports ready for fine-tuning: ShareGPT-style JSONL, Parquet, a LLaMA-Factory
``dataset_info.json`` entry and a ``manifest.json``. Data files are byte-deterministic."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

EXPORT_SCHEMA = pa.schema(
    [
        ("rank", pa.int64()),
        ("sample_id", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ]
)


def llama_factory_entry(dataset_name: str) -> dict:
    """``dataset_info.json`` for LLaMA-Factory's sharegpt formatting over a ``messages`` column."""
    return {
        dataset_name: {
            "file_name": "data.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
                "observation_tag": "tool",
            },
        }
    }


def write_export(folder: Path, rows: list[dict], manifest: dict, dataset_name: str, extra_files: dict[str, bytes] | None = None) -> dict[str, str]:
    """Write ``rows`` ({rank, sample_id, messages}) in rank order into ``folder`` (replaced atomically),
    plus ``extra_files`` (report, plots) by name."""
    folder = Path(folder)
    staging = folder.with_name(f".staging-{folder.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows = sorted(rows, key=lambda r: r["rank"])
    with open(staging / "data.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            record = {"messages": row["messages"], "sample_id": row["sample_id"], "rank": row["rank"]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), staging / "data.parquet")
    (staging / "dataset_info.json").write_text(json.dumps(llama_factory_entry(dataset_name), indent=2) + "\n")
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    for name, content in (extra_files or {}).items():
        (staging / name).write_bytes(content)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    names = ("data.jsonl", "data.parquet", "dataset_info.json", "manifest.json", *(extra_files or {}))
    return {name: str(folder / name) for name in names}
