"""Flow `nightly-retrain`: new data in, a better model promoted (or the incumbent kept) out.

    build-interleaved (incremental: unchanged shards come from the stage cache)
      -> build the held-out test set (cached likewise)
      -> train (from the model promoted on the channel, or from scratch; on nproc_per_node processes)
      -> evaluate the candidate (and the incumbent, if it has no scores on this test version yet)
      -> promote only if the candidate beats the incumbent on `metric` beyond noise (paired bootstrap over the
         test utterances) and is not worse on `guard_metric` by more than `guard_margin`
         (jstip.storage.promotion.PromotionPolicy)

Every decision, taken or not, is appended to the catalog's `promotions` table with the numbers it used.
Deployed as `nightly-retrain/nightly` with a cron schedule (prefect.yaml).
"""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402

from jstip.flows.build_interleaved import build_interleaved  # noqa: E402
from jstip.flows.evaluate import evaluate  # noqa: E402
from jstip.flows.train import train  # noqa: E402
from jstip.model.decode import DecodeOptions  # noqa: E402
from jstip.storage.promotion import PromotionDecision, PromotionPolicy  # noqa: E402
from jstip.storage.registry import ModelRegistry  # noqa: E402
from jstip.synth.demo import demo_test_corpus  # noqa: E402

_TASK_OPTIONS = dict(cache_policy=NONE, persist_result=False)


@task(name="incumbent", **_TASK_OPTIONS)
def incumbent_model(store: str, channel: str) -> str | None:
    record = ModelRegistry(store).promoted(channel)
    return record.model_id if record else None


@task(name="has-scores", **_TASK_OPTIONS)
def has_scores(store: str, model_id: str, test_version: str, decoding: str) -> bool:
    results = ModelRegistry(store).eval_results(model_id=model_id)
    return any(v == test_version and d == decoding for v, d in
               zip(results.column("dataset_version").to_pylist(), results.column("decoding").to_pylist()))


@task(name="best-decoding", **_TASK_OPTIONS)
def best_decoding(store: str, model_id: str) -> str:
    from jstip.model.evaluation import decodings_for

    record = ModelRegistry(store).model(model_id)
    return decodings_for(record.config["model"]["ctc_weight"] > 0)[-1].name


@task(name="promote", **_TASK_OPTIONS)
def promote(store: str, candidate: str, channel: str, test_set: str, test_version: str, decoding: str,
            policy: PromotionPolicy) -> PromotionDecision:
    return ModelRegistry(store).promote_if_better(candidate, channel=channel, test_set=test_set, decoding=decoding,
                                                  policy=policy, dataset_version=test_version)


@flow(name="nightly-retrain", log_prints=True)
def nightly_retrain(
    store: str = "./data",
    manifest: str | None = None,
    text_corpus: str | None = None,
    build_config: str | None = None,
    test_manifest: str | None = None,
    train_config: str | None = None,
    steps: int | None = None,
    init: str = "promoted",
    channel: str = "nightly",
    base_llm: str | None = None,
    metric: str = "entity_accuracy",
    min_gain: float = 0.0,
    confidence: float = 0.95,
    guard_metric: str | None = "wer",
    guard_margin: float = 0.02,
    decoding: str = "best",
    nproc_per_node: int = 1,
) -> PromotionDecision:
    """Rebuild, retrain, evaluate, and promote if better.

    manifest / text_corpus / build_config: the training corpus, as for build-interleaved (None: the
    embedded demo corpus).  test_manifest: the held-out test corpus (None: the demo's held-out test
    corpus); it is built with the same config under the dataset name `<name>-test`, role test (held out:
    never a default of any command).  train_config / steps / base_llm: as for the train flow (base_llm: an
    LM prior's model id, a hub id or a directory, overriding the config's model.llm.path).  init: promoted
    (continue from the channel's promoted model, if any) or scratch.  channel: the promotion channel.
    metric / min_gain / confidence / guard_metric / guard_margin: the promotion rule
    (jstip.storage.promotion.PromotionPolicy: promote when entity accuracy is better beyond noise and WER is
    not worse by more than 0.02).  decoding: the decoding the comparison uses; `best`: joint CTC/LLM beam
    search when the model has a CTC head, else beam search.  nproc_per_node: training processes (> 1: the
    train flow runs a torchrun DDP/FSDP2 job on this machine and waits for it).
    """
    if init not in ("promoted", "scratch"):
        raise ValueError(f"init must be 'promoted' or 'scratch', not {init!r}")
    policy = PromotionPolicy(metric=metric, min_gain=min_gain, confidence=confidence, guard_metric=guard_metric,
                             guard_margin=guard_margin)
    if decoding != "best":
        DecodeOptions.parse(decoding)
    logger = get_run_logger()
    published = build_interleaved(manifest=manifest, store=store, config_path=build_config, text_corpus=text_corpus)
    if test_manifest is None:
        test_manifest = demo_test_corpus(store)
    test = build_interleaved(manifest=test_manifest, store=store, config_path=build_config,
                             name=f"{published.name}-test", role="test")
    incumbent = incumbent_model(store, channel)
    trained = train(store=store, dataset_version=published.version_id, config_path=train_config, steps=steps,
                    init_model=incumbent if init == "promoted" else None, name=published.name, base_llm=base_llm,
                    nproc_per_node=nproc_per_node)
    if decoding == "best":
        decoding = best_decoding(store, trained.model_id)
    # every decoding of the candidate is reported; the promotion compares `decoding`
    evaluate(trained.model_id, store=store, test_version=test.version_id, test_set=test.name)
    if incumbent is not None and not has_scores(store, incumbent, test.version_id, decoding):
        evaluate(incumbent, store=store, test_version=test.version_id, test_set=test.name, decodings=[decoding])
    decision = promote(store, trained.model_id, channel, test.name, test.version_id, decoding, policy)
    logger.info("%s: %s", "promoted" if decision.promote else "kept the incumbent", decision.reason)
    return decision
