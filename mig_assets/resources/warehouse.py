"""The ``Warehouse`` resource: MIG_HOME paths and private DuckDB sessions over the Parquet."""

from contextlib import contextmanager
from typing import Iterator

import dagster as dg

from mig_assets.core.store.catalog import WarehouseLayout, open_catalog, publish_catalog
from mig_assets.settings import DEFAULT_MIG_HOME


class Warehouse(dg.ConfigurableResource):
    """Parquet warehouse and DuckDB catalog under ``mig_home``.

    Assets never open the shared ``mig.duckdb``: each session is an in-memory DuckDB over the
    Parquet (``open_catalog``), so a user's read-only session cannot block a run. After a session,
    the shared file is replaced (built beside it, then renamed) only when a view definition changed.
    Assets that write global tables still run in the ``duckdb`` pool (limit 1): versions are
    numbered from the tables' contents.
    """

    mig_home: str = DEFAULT_MIG_HOME

    @property
    def layout(self) -> WarehouseLayout:
        return WarehouseLayout(self.mig_home).ensure()

    @contextmanager
    def connect(self) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
        layout = self.layout
        with open_catalog(layout) as con:
            yield con
        self.publish_catalog()

    def publish_catalog(self) -> str:
        """Update the shared catalog file; a failure is logged, not raised: the data is in Parquet
        already, and the next run (or ``mig-assets repair``) writes the file again."""
        import duckdb

        try:
            return publish_catalog(self.layout)
        except (OSError, duckdb.Error) as exc:
            dg.get_dagster_logger().warning(f"{self.layout.duckdb_path} not updated ({exc}); the next run or `mig-assets repair` rebuilds it")
            return "failed"
