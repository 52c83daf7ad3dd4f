"""Column lineage metadata (``dagster/column_lineage``) in one line per asset."""

import dagster as dg


def column_lineage(upstream: str, **columns: str | tuple[str, ...]) -> dg.TableColumnLineage:
    """Each output column (keyword) derived from the named column(s) of the ``upstream`` asset."""
    return dg.TableColumnLineage(
        deps_by_column={
            column: [dg.TableColumnDep(asset_key=dg.AssetKey(upstream), column_name=name) for name in ((sources,) if isinstance(sources, str) else sources)]
            for column, sources in columns.items()
        }
    )
