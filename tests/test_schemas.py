"""Schema round trips and validation errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jstip.schemas import SCHEMA_VERSION, TABLES, SchemaError, conform, empty, from_rows


@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_every_schema_round_trips_through_parquet_with_its_version(tmp_path, table_name):
    table = empty(table_name)
    path = tmp_path / f"{table_name}.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.schema.equals(TABLES[table_name], check_metadata=True)
    assert back.schema.metadata[b"jstip.schema_version"] == SCHEMA_VERSION.encode()
    assert back.schema.metadata[b"jstip.table"] == table_name.encode()


def test_rows_round_trip_with_lists_and_nulls(tmp_path):
    rows = [dict(utterance_id="u1", recording_id="r1", audio_path="/a.wav", start=0.5, duration=None,
                 text="Take metformin.", domain="medical", entities=["metformin"], source="m.jsonl:1")]
    path = tmp_path / "u.parquet"
    pq.write_table(from_rows("utterances", rows), path)
    back = pq.read_table(path).to_pylist()
    assert back == [{**rows[0], "channel": None, "language": None, "speaker": None, "audio_sha256": None}]


def test_conform_casts_and_fills_optional_columns():
    table = pa.table({"utterance_id": ["u"], "word_index": pa.array([0], pa.int64()), "word": ["hi"],
                      "start": [0.1], "end": [0.2], "aligner": ["x"]})
    out = conform("word_alignments", table)
    assert out.schema.field("word_index").type == pa.int32()
    assert out.column("score").null_count == 1


@pytest.mark.parametrize("table, message", [
    (pa.table({"utterance_id": ["u"], "bogus": [1]}), "unexpected column"),
    (pa.table({"utterance_id": ["u"], "word_index": [0], "word": ["w"], "start": [0.0], "aligner": ["x"]}),
     "required column 'end' is missing"),
    (pa.table({"utterance_id": [None], "word_index": [0], "word": ["w"], "start": [0.0], "end": [1.0],
               "aligner": ["x"]}), "null value"),
    (pa.table({"utterance_id": ["u"], "word_index": ["zero"], "word": ["w"], "start": [0.0], "end": [1.0],
               "aligner": ["x"]}), "cannot cast"),
])
def test_conform_rejects_with_a_message_naming_the_column(table, message):
    with pytest.raises(SchemaError, match=message):
        conform("word_alignments", table)
