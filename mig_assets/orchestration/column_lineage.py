"""Column lineage metadata (``dagster/column_lineage``) in one line per asset."""

import dagster as dg


def column_lineage(deps: dict[str, list[tuple[str, str]]]) -> dg.TableColumnLineage:
    """``dagster/column_lineage`` from ``{column: [(upstream asset key, upstream column), ...]}``."""
    return dg.TableColumnLineage(
        deps_by_column={
            column: [dg.TableColumnDep(asset_key=dg.AssetKey(asset), column_name=name) for asset, name in sources] for column, sources in deps.items()
        }
    )
