"""Data contracts: Arrow schemas for every table jstip reads or writes, and their validation."""

from jstip.schemas.tables import DATASET_TABLES, SCHEMA_VERSION, TABLES
from jstip.schemas.validate import SchemaError, conform, empty, from_rows, schema_for

__all__ = ["DATASET_TABLES", "SCHEMA_VERSION", "TABLES", "SchemaError", "conform", "empty", "from_rows", "schema_for"]
