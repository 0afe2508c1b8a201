"""Trained models, their evaluation results and promotions, in the dataset store's DuckDB catalog.

Three tables beside the dataset versions in `<store>/catalog.duckdb`, created on the first write:

    models        one row per model: model_id, name, dataset_version (what it was trained on), config_json,
                  metrics_json (training metrics), path (its checkpoint, relative to the store root), created_at,
                  parent_model
    eval_results  one row per (model_id, dataset_version, test_set, decoding, domain, metric): value and
                  created_at; the records of jstip.tasks.metrics.score_hypotheses, domain "all" overall
    promotions    every promotion decision, taken or not: channel, decided_at, candidate_id, incumbent_id,
                  promoted, metric, candidate_value, incumbent_value, reason

The model promoted on a channel ("nightly", "release", ...) is the candidate of the latest promotions row
of that channel with promoted = true: the table is the channel's history, never rewritten. A promotion
compares the "all" eval results of candidate and incumbent on the same test set, decoding and dataset
version (`decide_promotion`, a pure function). Reads use a read-only connection and return nothing
when there is no catalog or no table yet. Every value is a bound parameter.
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

from jstip.storage.store import DatasetStore, StoreError

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
    reason          VARCHAR NOT NULL
);
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
])

# Which way is better, per metric of jstip.tasks.metrics (and the usual others). +1: higher is better.
METRIC_DIRECTIONS: dict[str, int] = {
    "entity_accuracy": +1, "accuracy": +1, "entity_hits": +1, "hits": +1, "bleu": +1,
    "wer": -1, "cer": -1, "eer": -1, "hallucination_rate": -1, "empty_hypothesis_rate": -1,
    "substitutions": -1, "deletions": -1, "insertions": -1, "entity_errors": -1, "hallucinations": -1,
    "empty_hypotheses": -1, "loss": -1,
}

# Two values closer than this are equal: metrics are ratios of integer counts, so real differences are
# far larger, while the same ratio computed two ways may differ in the last bits.
TIE_TOLERANCE = 1e-12


class RegistryError(StoreError):
    pass


def metric_direction(metric: str) -> int:
    """+1 when a higher value of `metric` is better, -1 when lower is better."""
    if metric in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[metric]
    if metric.endswith("accuracy"):
        return +1
    if metric.endswith(("error_rate", "_wer", "_cer", "_loss")):
        return -1
    raise RegistryError(f"no known direction for metric {metric!r}: use one of {sorted(METRIC_DIRECTIONS)} "
                        "(or a name ending in accuracy / error_rate)")


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


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    candidate_value: float
    incumbent_value: float | None
    candidate_id: str | None = None  # set by ModelRegistry.promote_if_better; decide_promotion knows no ids
    incumbent_id: str | None = None


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _value(values: Mapping[str, float], metric: str, whose: str) -> float:
    if metric not in values:
        raise RegistryError(f"the {whose} has no {metric!r} result (it has: {', '.join(sorted(values)) or 'none'})")
    value = float(values[metric])
    if math.isnan(value):
        raise RegistryError(f"the {whose}'s {metric!r} is NaN: it cannot be compared")
    return value


def decide_promotion(candidate: Mapping[str, float], incumbent: Mapping[str, float] | None, *,
                     metric: str = "entity_accuracy", tie_break: str | None = "wer",
                     min_improvement: float = 0.0) -> PromotionDecision:
    """Whether `candidate` should replace `incumbent`, from their metric values.

    No incumbent: promote. Otherwise compare `metric` in its direction (METRIC_DIRECTIONS): within
    TIE_TOLERANCE it is a tie, decided by `tie_break` alone (better: promote; worse or tied too, or no
    tie_break: the incumbent stays); else the candidate is promoted when it is better by more than
    `min_improvement` (absolute, in the metric's units; it does not apply to the tie-break).
    """
    if min_improvement < 0:
        raise RegistryError(f"min_improvement must be >= 0, not {min_improvement}")
    direction = metric_direction(metric)
    value = _value(candidate, metric, "candidate")
    better = "higher" if direction > 0 else "lower"
    if incumbent is None:
        return PromotionDecision(True, f"no incumbent: promoted with {metric} {_fmt(value)}", value, None)
    held = _value(incumbent, metric, "incumbent")
    gain = (value - held) * direction
    if abs(value - held) > TIE_TOLERANCE:
        if gain <= 0:
            return PromotionDecision(False, f"{metric} worse: {_fmt(value)} vs {_fmt(held)} ({better} is better)",
                                     value, held)
        if gain <= min_improvement:
            return PromotionDecision(False, f"{metric} better by {_fmt(gain)}: {_fmt(value)} vs {_fmt(held)}, "
                                     f"not more than min_improvement {_fmt(min_improvement)}", value, held)
        return PromotionDecision(True, f"{metric} better: {_fmt(value)} vs {_fmt(held)} ({better} is better)",
                                 value, held)
    tied = f"{metric} tied at {_fmt(held)}"
    if tie_break is None:
        return PromotionDecision(False, f"{tied}, no tie-break: the incumbent stays", value, held)
    tie_direction = metric_direction(tie_break)
    tie_value = _value(candidate, tie_break, "candidate")
    tie_held = _value(incumbent, tie_break, "incumbent")
    tie_better = "higher" if tie_direction > 0 else "lower"
    if abs(tie_value - tie_held) <= TIE_TOLERANCE:
        return PromotionDecision(False, f"{tied} and {tie_break} tied at {_fmt(tie_held)}: the incumbent stays",
                                 value, held)
    if (tie_value - tie_held) * tie_direction > 0:
        return PromotionDecision(True, f"{tied}; {tie_break} better: {_fmt(tie_value)} vs {_fmt(tie_held)} "
                                 f"({tie_better} is better)", value, held)
    return PromotionDecision(False, f"{tied}; {tie_break} worse: {_fmt(tie_value)} vs {_fmt(tie_held)} "
                             f"({tie_better} is better)", value, held)


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

    def record_eval(self, *, model_id: str, dataset_version: str, test_set: str, decoding: str,
                    metrics: Iterable[tuple[str, str, float]]) -> int:
        """Store (domain, metric, value) records (jstip.tasks.metrics.score_hypotheses) of a model on a test
        set with a decoding; returns the number of rows. Recording the same model, dataset version, test set
        and decoding again replaces its earlier rows: one evaluation is one set of figures."""
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
        created_at = _now()
        key = [model.model_id, dataset_version, test_set, decoding]
        with self._writing(f"record eval of model {model.model_id} on {test_set}") as con:
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
                          "incumbent_value, reason FROM promotions WHERE ? IS NULL OR channel = ? "
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
                          metric: str = "entity_accuracy", tie_break: str | None = "wer",
                          min_improvement: float = 0.0, dataset_version: str | None = None) -> PromotionDecision:
        """Promote `candidate_id` on `channel` if `decide_promotion` says so, comparing the "all" eval results
        of candidate and incumbent on `test_set` with `decoding` and the same dataset version (default: the
        one the candidate was evaluated on last). The decision is appended to `promotions` either way."""
        candidate = self.model(candidate_id)
        hint = (f"record them with ModelRegistry.record_eval; `jstip evals --test-set {test_set} "
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
            values = self._overall(con, candidate.model_id, dataset_version, test_set, decoding)
            if not values:
                raise RegistryError(f"model {candidate.model_id} has no eval results on test set {test_set!r} of "
                                    f"dataset version {dataset_version} with decoding {decoding!r} ({hint})")
            held = con.execute("SELECT candidate_id FROM promotions WHERE channel = ? AND promoted "
                               "ORDER BY decided_at DESC, rowid DESC LIMIT 1", [channel]).fetchall()
            incumbent_id = held[0][0] if held else None
            if incumbent_id == candidate.model_id:
                value = _value(values, metric, "candidate")
                decision = PromotionDecision(False, f"already the promoted model of channel {channel!r}", value, value)
            else:
                incumbent_values = None
                if incumbent_id is not None:
                    incumbent_values = self._overall(con, incumbent_id, dataset_version, test_set, decoding)
                    if not incumbent_values:
                        raise RegistryError(
                            f"the incumbent of channel {channel!r}, model {incumbent_id}, has no eval results on "
                            f"test set {test_set!r} of dataset version {dataset_version} with decoding {decoding!r}: "
                            f"evaluate it there before comparing ({hint})")
                decision = decide_promotion(values, incumbent_values, metric=metric, tie_break=tie_break,
                                            min_improvement=min_improvement)
            decision = replace(decision, candidate_id=candidate.model_id, incumbent_id=incumbent_id)
            con.execute("INSERT INTO promotions (channel, decided_at, candidate_id, incumbent_id, promoted, metric, "
                        "candidate_value, incumbent_value, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [channel, _now(), candidate.model_id, incumbent_id, decision.promote, metric,
                         decision.candidate_value, decision.incumbent_value, decision.reason])
        return decision
