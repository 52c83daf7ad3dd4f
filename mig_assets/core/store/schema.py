"""The DuckDB declarations of the global tables the selection and comparison assets append to.

Declared (``CREATE TABLE IF NOT EXISTS``) in an :func:`~mig_assets.core.store.catalog.open_catalog`
session before the first insert, so that :func:`~mig_assets.core.store.catalog.insert_table` casts
the rows to these types; a table with earlier rows is already a view over its Parquet and keeps it.
Tables replaced whole (graph, tree, target, tags) take their types from the Arrow table written.
"""

SELECTION_TABLES = """
CREATE TABLE IF NOT EXISTS selections (
    selection VARCHAR, version INTEGER, method VARCHAR, budget VARCHAR, n_selected BIGINT, n_pool BIGINT,
    config JSON, score_origin VARCHAR, score_fill DOUBLE, objective DOUBLE, export_dir VARCHAR, run_id VARCHAR,
    created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS selection_members (
    selection VARCHAR, version INTEGER, rank INTEGER, sample_id VARCHAR, gain DOUBLE, objective DOUBLE,
    top_labels VARCHAR[]);
CREATE TABLE IF NOT EXISTS selection_coverage (selection VARCHAR, version INTEGER, label VARCHAR, coverage DOUBLE);
CREATE TABLE IF NOT EXISTS selection_diffs (
    selection VARCHAR, version INTEGER, previous_version INTEGER, sample_id VARCHAR, change VARCHAR, reason VARCHAR);
"""

COMPARISON_TABLES = """
CREATE TABLE IF NOT EXISTS comparisons (
    version INTEGER, method VARCHAR, size BIGINT, mig_objective DOUBLE, tags_objective DOUBLE, label_coverage DOUBLE,
    leaf_coverage DOUBLE, mean_quality DOUBLE, embedding_diversity DOUBLE, kl_to_target DOUBLE, seconds DOUBLE,
    budget VARCHAR, n_pool BIGINT, run_id VARCHAR, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS comparison_members (version INTEGER, method VARCHAR, rank INTEGER, sample_id VARCHAR);
"""
