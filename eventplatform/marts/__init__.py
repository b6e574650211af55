"""Analytic marts: SQL files in ``sql/marts/`` built per day in DuckDB over the Parquet lake,
exported as Parquet, loaded into the warehouse file and mirrored to ClickHouse.

Knows nothing of Dagster; ``eventplatform/defs/marts/`` makes each mart an asset.
"""
