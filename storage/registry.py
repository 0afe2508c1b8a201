"""Trained models, their evaluation results and promotions, in the dataset store's DuckDB catalog.

Three tables beside the dataset versions in `<store>/catalog.duckdb`, created on the first write:

    models        one row per model: model_id, name, dataset_version (what it was trained on), config_json,
                  metrics_json (training metrics), path (its checkpoint, relative to the store root), created_at,
                  parent_model (the model it continued, or the LM prior it was built on; LM priors have config
                  "kind": "lm_prior")
    eval_results  one row per (model_id, dataset_version, test_set, decoding, domain, metric): value and
                  created_at; the records of jstip.model.metrics.score_hypotheses, domain "all" overall
    promotions    every promotion decision, taken or not: channel, decided_at, candidate_id, incumbent_id,
                  promoted, metric, candidate_value, incumbent_value, reason, evidence_json (every number
                  the decision used: the policy, both models' values and the paired intervals)

Beside them, per evaluation, the per-utterance scores: `<store>/evals/<model>/<dataset version>/<decoding>.parquet`
(`eval_path`), written by `record_eval` and read by promotion.

The model promoted on a channel ("nightly", "release", ...) is the candidate of the latest promotions row
of that channel with promoted = true: the table is the channel's history, never rewritten. A promotion
compares the per-utterance scores of candidate and incumbent on the same test set, decoding and dataset
version with a paired bootstrap (jstip.storage.promotion: `decide_promotion`, a pure function; the rule is
`PromotionPolicy`).
Reads use a read-only connection and return nothing when there is no catalog or no table yet. Every
value is a bound parameter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jstip.storage.promotion import PromotionDecision, PromotionPolicy, decide_promotion
from jstip.storage.store import DatasetStore, RegistryError

REGISTRY_TABLES = ("models", "eval_results", "promotions")

_REGISTRY_DDL = """
CREATE TABLE IF NOT EXISTS models (
    model_id        VARCHAR PRIMARY KEY,
    name            VARCHAR NOT NULL,
    dataset_version VARCHAR NOT NULL,
    config_json     VARCHAR NOT NULL,
    metrics_json    VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    parent_model    VARCHAR
);
CREATE TABLE IF NOT EXISTS eval_results (
    model_id        VARCHAR NOT NULL,
    dataset_version VARCHAR NOT NULL,
    test_set        VARCHAR NOT NULL,
    decoding        VARCHAR NOT NULL,
    domain          VARCHAR NOT NULL,
    metric          VARCHAR NOT NULL,
    value           DOUBLE NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model_id, dataset_version, test_set, decoding, domain, metric)
);
CREATE TABLE IF NOT EXISTS promotions (
    channel         VARCHAR NOT NULL,
    decided_at      TIMESTAMPTZ NOT NULL,
    candidate_id    VARCHAR NOT NULL,
    incumbent_id    VARCHAR,
    promoted        BOOLEAN NOT NULL,
    metric          VARCHAR NOT NULL,
    candidate_value DOUBLE,
    incumbent_value DOUBLE,
    reason          VARCHAR NOT NULL,
    evidence_json   VARCHAR
);
-- catalogs made before decisions carried their numbers
ALTER TABLE promotions ADD COLUMN IF NOT EXISTS evidence_json VARCHAR;
"""

EVAL_RESULTS_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("dataset_version", pa.string()), ("test_set", pa.string()),
    ("decoding", pa.string()), ("domain", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])
PROMOTIONS_SCHEMA = pa.schema([
    ("channel", pa.string()), ("decided_at", pa.timestamp("us", tz="UTC")), ("candidate_id", pa.string()),
    ("incumbent_id", pa.string()), ("promoted", pa.bool_()), ("metric", pa.string()),
    ("candidate_value", pa.float64()), ("incumbent_value", pa.float64()), ("reason", pa.string()),
    ("evidence_json", pa.string()),
])

@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    name: str
    dataset_version: str  # the dataset version it was trained on
    config_json: str
    metrics: dict  # training metrics
    path: Path  # checkpoint
    created_at: datetime
    parent_model: str | None = None

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ModelRegistry:
    """Models, eval results and promotions of one dataset store (see the module docstring)."""

    def __init__(self, store: DatasetStore | str | Path):
        self.store = store if isinstance(store, DatasetStore) else DatasetStore(store)

    # -- connections ---------------------------------------------------------------------------

    @contextmanager
    def _writing(self, purpose: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, with the registry tables in place, under the
        store's write lock: every registry write reads first (is the model there? who is the incumbent?),
        and the catalog must not change between that read and the write."""
        with self.store.write_lock(purpose=purpose), self.store.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(_REGISTRY_DDL)
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Rows of a read-only query over the registry tables; [] when they do not exist yet."""
        if not self.store.catalog_path.exists():
            return []
        with self.store.connect(read_only=True) as con:
            present = {name for (name,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                "AND table_name IN (?, ?, ?)", list(REGISTRY_TABLES)).fetchall()}
            if len(present) < len(REGISTRY_TABLES):
                return []
            con.execute("SET TimeZone = 'UTC'")
            return con.execute(sql, list(params)).fetchall()

    # -- models --------------------------------------------------------------------------------

    def register_model(self, *, model_id: str, name: str, dataset_version: str, config_json: str,
                       metrics: Mapping[str, float], path: str | Path, parent_model: str | None = None
                       ) -> ModelRecord:
        """Record a trained model. Registering the same model_id again returns the existing record (its
        first metrics and created_at); a different name, dataset version, config, path or parent under
        that id is an error."""
        try:
            json.loads(config_json)
        except (TypeError, json.JSONDecodeError) as e:
            raise RegistryError(f"model {model_id}: config_json is not JSON ({e})") from None
        record = ModelRecord(model_id=model_id, name=name, dataset_version=dataset_version, config_json=config_json,
                             metrics=dict(metrics), path=Path(path), created_at=_now(), parent_model=parent_model)
        with self._writing(f"register model {model_id}") as con:
            existing = con.execute("SELECT * FROM models WHERE model_id = ?", [model_id]).fetchall()
            if existing:
                old = self._row_to_model(existing[0])
                fields = ("name", "dataset_version", "config_json", "path", "parent_model")
                differ = [f for f in fields if getattr(old, f) != getattr(record, f)]
                if differ:
                    raise RegistryError(f"model {model_id} is already registered with a different "
                                        f"{', '.join(differ)}: a model id names one model")
                return old
            if parent_model is not None and not con.execute("SELECT 1 FROM models WHERE model_id = ?",
                                                            [parent_model]).fetchall():
                raise RegistryError(f"model {model_id}: parent model {parent_model!r} is not registered")
            con.execute("INSERT INTO models (model_id, name, dataset_version, config_json, metrics_json, path, "
                        "created_at, parent_model) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [record.model_id, record.name, record.dataset_version, record.config_json,
                         json.dumps(record.metrics, sort_keys=True), self.store.relative(record.path),
                         record.created_at,
                         record.parent_model])
        return record

    _MODEL_COLUMNS = "model_id, name, dataset_version, config_json, metrics_json, path, created_at, parent_model"

    def _row_to_model(self, row: tuple) -> ModelRecord:
        model_id, name, dataset_version, config_json, metrics_json, path, created_at, parent_model = row
        # the path is recorded relative to the store root: a moved or copied store finds its own models
        return ModelRecord(model_id=model_id, name=name, dataset_version=dataset_version, config_json=config_json,
                           metrics=json.loads(metrics_json), path=self.store.resolve(path), created_at=created_at,
                           parent_model=parent_model)

    def models(self, name: str | None = None) -> list[ModelRecord]:
        """Registered models, oldest first (of one name, if given)."""
        rows = self._read(f"SELECT {self._MODEL_COLUMNS} FROM models WHERE ? IS NULL OR name = ? "
                          "ORDER BY created_at, rowid", [name, name])
        return [self._row_to_model(row) for row in rows]

    def model(self, model_id: str) -> ModelRecord:
        """Look a model up by id or unique id prefix."""
        rows = self._read(f"SELECT {self._MODEL_COLUMNS} FROM models WHERE model_id = ? OR starts_with(model_id, ?) "
                          "ORDER BY created_at, rowid", [model_id, model_id])
        exact = [row for row in rows if row[0] == model_id]
        if exact:
            return self._row_to_model(exact[0])
        hint = f"see `jstip models list --store {self.store.root}`"
        if not rows:
            raise RegistryError(f"no model {model_id!r} in {self.store.catalog_path} ({hint})")
        if len(rows) > 1:
            raise RegistryError(f"model prefix {model_id!r} is ambiguous: {[row[0] for row in rows]} ({hint})")
        return self._row_to_model(rows[0])

    # -- eval results --------------------------------------------------------------------------

    def eval_path(self, model_id: str, dataset_version: str, decoding: str) -> Path:
        """Where the per-utterance scores (and hypotheses) of one evaluation live."""
        return self.store.root / "evals" / model_id / dataset_version / f"{decoding}.parquet"

    def eval_utterances(self, model_id: str, dataset_version: str, decoding: str) -> pa.Table:
        """The per-utterance scores of one evaluation (written by `record_eval(..., utterances=...)`)."""
        return self._eval_utterances(self.model(model_id).model_id, dataset_version, decoding)

    def _eval_utterances(self, model_id: str, dataset_version: str, decoding: str) -> pa.Table:
        path = self.eval_path(model_id, dataset_version, decoding)
        if not path.is_file():
            raise RegistryError(f"no per-utterance scores of model {model_id} on dataset version "
                                f"{dataset_version} with decoding {decoding!r} ({path} is missing): evaluate it "
                                f"with `jstip evaluate {model_id} --test-version {dataset_version} "
                                f"--decoding {decoding} --store {self.store.root}`")
        return pq.read_table(path)

    def record_eval(self, *, model_id: str, dataset_version: str, test_set: str, decoding: str,
                    metrics: Iterable[tuple[str, str, float]], utterances: pa.Table | None = None) -> int:
        """Store (domain, metric, value) records (jstip.model.metrics.score_hypotheses) of a model on a test
        set with a decoding; returns the number of rows. Recording the same model, dataset version, test set
        and decoding again replaces its earlier rows: one evaluation is one set of figures.

        utterances: the per-utterance scores (jstip.model.metrics.utterance_scores columns, plus any others
        such as reference and hypothesis), written as Parquet to `eval_path`: what promotion's paired test
        and every interval are computed from."""
        model = self.model(model_id)
        records = [(str(domain), str(metric), float(value)) for domain, metric, value in metrics]
        if not records:
            raise RegistryError(f"no eval results to record for model {model.model_id} on {test_set}")
        seen: set[tuple[str, str]] = set()
        for domain, metric, value in records:
            if (domain, metric) in seen:
                raise RegistryError(f"eval results for model {model.model_id} on {test_set}: "
                                    f"({domain}, {metric}) given twice")
            if not math.isfinite(value):
                raise RegistryError(f"eval results for model {model.model_id} on {test_set}: "
                                    f"({domain}, {metric}) is {value}, not a finite number")
            seen.add((domain, metric))
        if utterances is not None:
            from jstip.model.metrics import _COUNT_COLUMNS

            missing = [c for c in ("utterance_id", *_COUNT_COLUMNS) if c not in utterances.column_names]
            if missing:
                raise RegistryError(f"per-utterance scores of model {model.model_id} on {test_set}: missing "
                                    f"columns {missing}")
        created_at = _now()
        key = [model.model_id, dataset_version, test_set, decoding]
        with self._writing(f"record eval of model {model.model_id} on {test_set}") as con:
            if utterances is not None:
                target = self.eval_path(model.model_id, dataset_version, decoding)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                pq.write_table(utterances, tmp, compression="zstd")
                tmp.replace(target)
            con.execute("DELETE FROM eval_results WHERE model_id = ? AND dataset_version = ? AND test_set = ? "
                        "AND decoding = ?", key)
            con.executemany("INSERT INTO eval_results (model_id, dataset_version, test_set, decoding, domain, "
                            "metric, value, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [[*key, domain, metric, value, created_at] for domain, metric, value in records])
        return len(records)

    def eval_results(self, model_id: str | None = None, test_set: str | None = None) -> pa.Table:
        """Eval result rows (EVAL_RESULTS_SCHEMA) in the order recorded, of one model (id or unique prefix)
        and/or test set if given."""
        if model_id is not None:
            model_id = self.model(model_id).model_id
        rows = self._read("SELECT model_id, dataset_version, test_set, decoding, domain, metric, value, created_at "
                          "FROM eval_results WHERE (? IS NULL OR model_id = ?) AND (? IS NULL OR test_set = ?) "
                          "ORDER BY created_at, rowid", [model_id, model_id, test_set, test_set])
        return pa.Table.from_pylist([dict(zip(EVAL_RESULTS_SCHEMA.names, row)) for row in rows],
                                    schema=EVAL_RESULTS_SCHEMA)

    # -- promotions ----------------------------------------------------------------------------

    def promoted(self, channel: str = "nightly") -> ModelRecord | None:
        """The model promoted on `channel` last, or None."""
        rows = self._read("SELECT candidate_id FROM promotions WHERE channel = ? AND promoted "
                          "ORDER BY decided_at DESC, rowid DESC LIMIT 1", [channel])
        return self.model(rows[0][0]) if rows else None

    def channels(self) -> dict[str, str]:
        """{channel: model id} of the model each channel has promoted now."""
        return dict(self._read(
            "SELECT channel, candidate_id FROM (SELECT channel, candidate_id, row_number() OVER (PARTITION BY channel "
            "ORDER BY decided_at DESC, rowid DESC) AS k FROM promotions WHERE promoted) WHERE k = 1 ORDER BY channel"))

    def promotions(self, channel: str | None = None) -> pa.Table:
        """Every promotion decision (PROMOTIONS_SCHEMA), oldest first, of one channel if given."""
        rows = self._read("SELECT channel, decided_at, candidate_id, incumbent_id, promoted, metric, candidate_value, "
                          "incumbent_value, reason, evidence_json FROM promotions WHERE ? IS NULL OR channel = ? "
                          "ORDER BY decided_at, rowid", [channel, channel])
        return pa.Table.from_pylist([dict(zip(PROMOTIONS_SCHEMA.names, row)) for row in rows],
                                    schema=PROMOTIONS_SCHEMA)

    @staticmethod
    def _overall(con: duckdb.DuckDBPyConnection, model_id: str, dataset_version: str, test_set: str,
                 decoding: str) -> dict[str, float]:
        return dict(con.execute("SELECT metric, value FROM eval_results WHERE model_id = ? AND dataset_version = ? "
                                "AND test_set = ? AND decoding = ? AND domain = 'all'",
                                [model_id, dataset_version, test_set, decoding]).fetchall())

    def promote_if_better(self, candidate_id: str, *, channel: str, test_set: str, decoding: str,
                          policy: PromotionPolicy = PromotionPolicy(),
                          dataset_version: str | None = None) -> PromotionDecision:
        """Promote `candidate_id` on `channel` if `decide_promotion` says so under `policy`, comparing the
        per-utterance scores of candidate and incumbent on `test_set` with `decoding` and the same dataset
        version (default: the one the candidate was evaluated on last). The decision is appended to
        `promotions` either way, with its numbers in `evidence_json`."""
        candidate = self.model(candidate_id)
        hint = (f"evaluate it with `jstip evaluate`; `jstip evals --test-set {test_set} "
                f"--store {self.store.root}` lists what there is")
        with self._writing(f"promote model {candidate.model_id} on {channel}") as con:
            if dataset_version is None:
                latest = con.execute("SELECT dataset_version FROM eval_results WHERE model_id = ? AND test_set = ? "
                                     "AND decoding = ? AND domain = 'all' ORDER BY created_at DESC, rowid DESC LIMIT 1",
                                     [candidate.model_id, test_set, decoding]).fetchall()
                if not latest:
                    raise RegistryError(f"model {candidate.model_id} has no eval results on test set {test_set!r} "
                                        f"with decoding {decoding!r} ({hint})")
                dataset_version = latest[0][0]
            if not self._overall(con, candidate.model_id, dataset_version, test_set, decoding):
                raise RegistryError(f"model {candidate.model_id} has no eval results on test set {test_set!r} of "
                                    f"dataset version {dataset_version} with decoding {decoding!r} ({hint})")
            scores = self._eval_utterances(candidate.model_id, dataset_version, decoding)
            held = con.execute("SELECT candidate_id FROM promotions WHERE channel = ? AND promoted "
                               "ORDER BY decided_at DESC, rowid DESC LIMIT 1", [channel]).fetchall()
            incumbent_id = held[0][0] if held else None
            if incumbent_id == candidate.model_id:
                decision = decide_promotion(scores, None, policy)
                decision = replace(decision, promote=False, incumbent_value=decision.candidate_value,
                                   reason=f"already the promoted model of channel {channel!r}")
            else:
                incumbent_scores = None
                if incumbent_id is not None:
                    if not self._overall(con, incumbent_id, dataset_version, test_set, decoding):
                        raise RegistryError(
                            f"the incumbent of channel {channel!r}, model {incumbent_id}, has no eval results on "
                            f"test set {test_set!r} of dataset version {dataset_version} with decoding {decoding!r}: "
                            f"evaluate it there before comparing ({hint})")
                    incumbent_scores = self._eval_utterances(incumbent_id, dataset_version, decoding)
                decision = decide_promotion(scores, incumbent_scores, policy)
            decision = replace(decision, candidate_id=candidate.model_id, incumbent_id=incumbent_id)
            evidence = {**(decision.evidence or {}), "test_set": test_set, "dataset_version": dataset_version,
                        "decoding": decoding}
            decision = replace(decision, evidence=evidence)
            con.execute("INSERT INTO promotions (channel, decided_at, candidate_id, incumbent_id, promoted, metric, "
                        "candidate_value, incumbent_value, reason, evidence_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [channel, _now(), candidate.model_id, incumbent_id, decision.promote, policy.metric,
                         decision.candidate_value, decision.incumbent_value, decision.reason,
                         json.dumps(evidence, sort_keys=True)])
        return decision
