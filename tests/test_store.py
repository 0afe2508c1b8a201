"""The versioned store: atomic publish, lineage, catalog views, old versions readable."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jstip.schemas import SchemaError, from_rows
from jstip.storage import DatasetStore, StoreError, version_id_for


def _spans(n: int) -> pa.Table:
    return from_rows("spans", [
        dict(plan_id="p", utterance_id=f"u{i}", span_index=0, modality="speech", role="speech", first_word=0,
             last_word=1, num_words=2, text="hello there", audio_start=0.0, audio_end=1.0, start_sample=0,
             end_sample=16000)
        for i in range(n)
    ])


def _utterances(n: int) -> pa.Table:
    return from_rows("utterances", [
        dict(utterance_id=f"u{i}", recording_id=f"r{i}", audio_path=f"/a/{i}.wav", start=0.0, duration=1.0,
             text="hello there", domain="medical", entities=["hello"], source=f"m.jsonl:{i + 1}")
        for i in range(n)
    ])


def _publish(store: DatasetStore, n: int, config: str = '{"a":1}', name: str = "demo"):
    return store.publish(name, {"spans": _spans(n), "utterances": _utterances(n)},
                         input_hash=f"in{n}", config_json=config, code_version="0.1.0+test")


def test_publish_writes_every_table_and_registers_views(tmp_path):
    store = DatasetStore(tmp_path / "data")
    version = _publish(store, 3)

    assert version.version_id == version_id_for("in3", '{"a":1}', "0.1.0+test")
    assert version.path == tmp_path / "data" / "datasets" / "demo" / version.version_id
    assert version.row_counts == {"recordings": 0, "utterances": 3, "normalized_audio": 0, "word_alignments": 0,
                                  "quarantine": 0, "interleave_plans": 0, "spans": 3, "text_corpus": 0}
    assert sorted(p.name for p in version.path.iterdir()) == sorted(version.row_counts)
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM spans").fetchone() == (3,)
        assert con.execute("SELECT count(*) FROM word_alignments").fetchone() == (0,)
        assert con.execute("SELECT version_id, status FROM dataset_versions").fetchall() == [
            (version.version_id, "published")]
        # an empty table still has its schema
        assert "utterance_id" in [d[0] for d in con.execute("SELECT * FROM quarantine").description]


def test_republishing_the_same_inputs_returns_the_same_version(tmp_path):
    store = DatasetStore(tmp_path)
    first = _publish(store, 2)
    again = _publish(store, 2)
    assert again.version_id == first.version_id
    assert len(store.versions()) == 1


def test_lineage_and_old_versions_stay_readable(tmp_path):
    store = DatasetStore(tmp_path)
    old = _publish(store, 2, config='{"a":1}')
    new = _publish(store, 5, config='{"a":2}')

    assert new.version_id != old.version_id
    assert new.parent_version == old.version_id
    assert old.parent_version is None
    assert [v.version_id for v in store.versions("demo")] == [old.version_id, new.version_id]
    assert store.latest("demo").version_id == new.version_id
    assert store.read_table(old.version_id, "spans").num_rows == 2
    assert store.read_table(new.version_id[:8], "spans").num_rows == 5
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM spans").fetchone() == (5,)  # latest
        assert con.execute(f"SELECT count(*) FROM v_{old.version_id}.spans").fetchone() == (2,)
        assert con.execute(f"SELECT count(*) FROM v_{new.version_id}.spans").fetchone() == (5,)


def test_a_failure_mid_publish_leaves_no_visible_version(tmp_path, monkeypatch):
    store = DatasetStore(tmp_path)
    good = _publish(store, 2)

    written = []
    real_write = pq.write_table

    def failing_write(table, where, **kwargs):
        written.append(where)
        if len(written) == 3:  # after two tables are on disk
            raise OSError("disk full (injected)")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="injected"):
        _publish(store, 7, config='{"a":9}')
    monkeypatch.undo()

    assert [v.version_id for v in store.versions()] == [good.version_id]
    assert sorted(p.name for p in (tmp_path / "datasets" / "demo").iterdir()) == [good.version_id]
    assert not any((tmp_path / ".staging").iterdir())
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM spans").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM dataset_versions").fetchone() == (1,)


def test_a_version_renamed_but_never_registered_is_replaced(tmp_path):
    """A kill between rename and registration leaves an invisible directory; the next publish replaces it."""
    store = DatasetStore(tmp_path)
    vid = version_id_for("in4", '{"a":1}', "0.1.0+test")
    orphan = tmp_path / "datasets" / "demo" / vid
    (orphan / "spans").mkdir(parents=True)
    (orphan / "spans" / "part-00000.parquet").write_bytes(b"half-written")
    assert store.versions() == []

    version = _publish(store, 4)
    assert version.version_id == vid
    assert store.read_table(vid, "spans").num_rows == 4


def test_publish_rejects_tables_that_break_their_schema(tmp_path):
    store = DatasetStore(tmp_path)
    bad = pa.table({"plan_id": ["p"], "utterance_id": [None]})
    with pytest.raises(SchemaError, match="spans.utterance_id: 1 null value"):
        store.publish("demo", {"spans": bad}, input_hash="x", config_json="{}", code_version="t")
    assert store.versions() == []


def test_unknown_version_is_a_clear_error(tmp_path):
    store = DatasetStore(tmp_path)
    _publish(store, 1)
    with pytest.raises(StoreError, match="no dataset version or dataset named 'zzz'"):
        store.version("zzz")


def test_derived_views_exist_for_the_latest_and_every_version(tmp_path, monkeypatch):
    from jstip.storage import views

    store = DatasetStore(tmp_path)
    old = _publish(store, 2, config='{"a":1}')  # published before the view existed
    monkeypatch.setitem(views.DERIVED_VIEWS, "span_count", "SELECT count(*) AS n FROM spans")
    _publish(store, 3, config='{"a":2}')
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT n FROM span_count").fetchone() == (3,)
        assert con.execute(f"SELECT n FROM v_{old.version_id}.span_count").fetchone() == (2,)


def test_stage_results_in_published_form_are_linked_not_rewritten(tmp_path):
    from jstip.storage.store import PARQUET_OPTIONS

    part = tmp_path / "spans.parquet"
    pq.write_table(_spans(4), part, **PARQUET_OPTIONS)
    store = DatasetStore(tmp_path / "data")
    version = store.publish("demo", {"spans": [part]}, input_hash="x", config_json="{}", code_version="t")
    [published] = list((version.path / "spans").iterdir())
    assert published.stat().st_ino == part.stat().st_ino  # the same file, linked
    assert version.row_counts["spans"] == 4 and store.read_table(version.version_id, "spans").num_rows == 4
