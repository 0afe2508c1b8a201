"""Flow `evaluate`: a registered model and a test dataset version in, scores in the catalog out.

    resolve test version -> decode + score (one task per decoding) -> eval_results + hypotheses Parquet

The logic lives in jstip.model.evaluation.
"""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402

from jstip.model.decode import DecodeOptions  # noqa: E402
from jstip.storage.store import DatasetStore  # noqa: E402
from jstip.model import evaluation  # noqa: E402
from jstip.model.sequence_pools import resolve_version  # noqa: E402

_TASK_OPTIONS = dict(cache_policy=NONE, persist_result=False)


@task(name="resolve-test-version", **_TASK_OPTIONS)
def resolve_test_version(store: str, test_version: str | None) -> str:
    data_store = DatasetStore(store)
    return resolve_version(data_store, test_version or data_store.newest_test_set().version_id).version_id


# One task for all decodings: the model is loaded once (a real LLM takes long to load), then each decoding
# runs over the test set and is recorded as soon as it is scored.
@task(name="decode-and-score", **_TASK_OPTIONS)
def decode_and_score(store: str, model_id: str, test_version: str, test_set: str | None,
                     decodings: list[str] | None, limit: int | None) -> evaluation.EvalReport:
    options = None if decodings is None else [DecodeOptions.parse(name) for name in decodings]
    return evaluation.evaluate(store, model_id, test_version, test_set=test_set, decodings=options, limit=limit,
                               on_log=get_run_logger().info)


@flow(name="evaluate", log_prints=True)
def evaluate(
    model_id: str,
    store: str = "./data",
    test_version: str | None = None,
    test_set: str | None = None,
    decodings: list[str] | None = None,
    limit: int | None = None,
) -> dict[str, dict[str, float]]:
    """Score a registered model on a test dataset version; returns decoding -> overall metrics.

    model_id: registered model id or unique prefix.  test_version: the test set's version id, prefix or dataset
    name (None: the newest version of role test).  test_set: its name in eval_results (None: the version's
    dataset name).  decodings: greedy | beam<N> | joint-ctc<lambda>-beam<N> | ctc-greedy (None: greedy,
    ctc-greedy and joint-ctc0.3-beam4 when the model has a CTC head, else greedy and beam4).  limit: score
    only the first N utterances (smoke runs).
    """
    for name in decodings or []:
        DecodeOptions.parse(name)  # a typo fails before the model is loaded
    version = resolve_test_version(store, test_version)
    return decode_and_score(store, model_id, version, test_set, decodings, limit).overall
