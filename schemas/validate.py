"""Conform and validate Arrow tables against the schemas in schemas.tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jstip.schemas.tables import TABLES


class SchemaError(ValueError):
    pass


def schema_for(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise SchemaError(f"unknown table {table!r}; known tables: {', '.join(sorted(TABLES))}") from None


def conform(table_name: str, table: pa.Table) -> pa.Table:
    """Return `table` with exactly the schema of `table_name`, or raise SchemaError saying why not.

    Missing nullable columns are added as nulls; extra columns, missing required columns, nulls in
    required columns and uncastable types are errors.
    """
    schema = schema_for(table_name)
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise SchemaError(f"{table_name}: unexpected column(s) {sorted(extra)}; schema has {schema.names}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{table_name}: required column {field.name!r} is missing")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(
                    f"{table_name}.{field.name}: cannot cast {column.type} to {field.type}: {e}") from None
        if not field.nullable and column.null_count:
            first = pc.index(pc.is_null(column), True).as_py()
            raise SchemaError(f"{table_name}.{field.name}: {column.null_count} null value(s) in a required "
                              f"column (first at row {first})")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def from_rows(table_name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a conformed table from row dicts (for small tables: manifests, quarantine, catalog rows)."""
    schema = schema_for(table_name)
    rows = list(rows)
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    try:
        table = pa.table({name: pa.array(values, type=schema.field(name).type) for name, values in columns.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SchemaError(f"{table_name}: {e}") from None
    return conform(table_name, table)


def empty(table_name: str) -> pa.Table:
    return schema_for(table_name).empty_table()
