"""The ``Warehouse`` resource: MIG_HOME paths and short-lived DuckDB connections."""

from contextlib import contextmanager
from typing import Iterator

import dagster as dg

from mig_assets.core.warehouse import WarehouseLayout

DEFAULT_MIG_HOME = "mig_home"


class Warehouse(dg.ConfigurableResource):
    """Parquet warehouse and DuckDB catalog under ``mig_home``.

    DuckDB allows one writer per file: connections are opened only around the SQL (never around
    model work), and every asset that writes the catalog runs in the ``duckdb`` pool (limit 1).
    """

    mig_home: str = DEFAULT_MIG_HOME

    @property
    def layout(self) -> WarehouseLayout:
        return WarehouseLayout(self.mig_home).ensure()

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
        if read_only:
            import duckdb

            with duckdb.connect(str(self.layout.duckdb_path), read_only=True) as con:
                yield con
            return
        from dagster_duckdb import DuckDBResource  # retries while another writer holds the file lock

        with DuckDBResource(database=str(self.layout.duckdb_path)).get_connection() as con:
            try:
                yield con
            finally:  # get_connection closes only on success: a failed asset must not keep the file open
                con.close()

    def refresh_catalog(self) -> list[str]:
        with self.connect() as con:
            return self.layout.refresh_catalog(con)
