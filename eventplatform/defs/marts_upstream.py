"""TEMPORARY stand-in for the landing code's ``events_lake`` asset (branch marts only).

The landing work (another branch) defines the asset ``events_lake`` (the Parquet lake the
marts read). Until it is merged, this spec declares the key so the marts' lineage resolves.
At merge: delete this file and its line in ``definitions.py``.
"""

from dagster import AssetSpec

events_lake_placeholder = AssetSpec(
    "events_lake",
    group_name="ingest",
    kinds={"parquet"},
    description="The Parquet lake of landed events (defined by the landing code; "
    "placeholder in the marts branch).",
)
