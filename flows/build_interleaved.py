"""Flow `build-interleaved`: a speech corpus in, a published, versioned interleaved dataset out.

    ingest -> shards -> normalize -> align -> check -> plan -> plan-text -> publish
                        (one task per shard and stage; results cached by content under <store>/work)

The flow only wires tasks; each stage's logic is a function in jstip.tasks, its caching in
jstip.storage.work, publishing in jstip.storage.store.
"""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

import os  # noqa: E402

from prefect import flow, get_run_logger, task, unmapped  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from jstip import progress  # noqa: E402
from jstip.config import BuildConfig, RunnerConfig, load_config  # noqa: E402
from jstip.tasks import stages  # noqa: E402

# Stage results are cached by content on disk (jstip.storage.work); Prefect's own result cache is off so
# that there is exactly one cache and its keys are ours.
_TASK_OPTIONS = dict(cache_policy=NONE, persist_result=False)


@task(name="ingest", **_TASK_OPTIONS)
def ingest(manifest: str, text_corpus: str | None, store: str, config: BuildConfig) -> stages.Ingested:
    ingested = stages.ingest(manifest, text_corpus, store, config)
    get_run_logger().info("ingested %s (%s): %d entries in %d shards of <= %d", manifest, ingested.format,
                          ingested.num_entries, len(ingested.shards), config.shard_size)
    return ingested


@task(name="resume", **_TASK_OPTIONS)
def resume(ingested: stages.Ingested, store: str, config: BuildConfig) -> stages.Resumed:
    resumed = stages.resume(ingested, store, config)
    get_run_logger().info(resumed.summary())
    return resumed


@task(name="normalize", task_run_name="normalize-{shard.shard_id}", **_TASK_OPTIONS)
def normalize(shard: stages.Shard, store: str, config: BuildConfig) -> stages.StageOutput:
    return stages.normalize(shard, store, config)


@task(name="align", task_run_name="align-{shard.shard_id}", **_TASK_OPTIONS)
def align(shard: stages.Shard, normalized: stages.StageOutput, store: str, config: BuildConfig) -> stages.StageOutput:
    return stages.align(shard, normalized, store, config)


@task(name="check", task_run_name="check-{shard.shard_id}", **_TASK_OPTIONS)
def check(shard: stages.Shard, normalized: stages.StageOutput, aligned: stages.StageOutput, store: str,
          config: BuildConfig) -> stages.StageOutput:
    return stages.check(shard, normalized, aligned, store, config)


@task(name="plan", task_run_name="plan-{shard.shard_id}", **_TASK_OPTIONS)
def plan(shard: stages.Shard, checked: stages.StageOutput, store: str, config: BuildConfig) -> stages.StageOutput:
    return stages.plan(shard, checked, store, config)


@task(name="plan-text", **_TASK_OPTIONS)
def plan_text(ingested: stages.Ingested, planned: list[stages.StageOutput], store: str,
              config: BuildConfig) -> stages.StageOutput:
    text_planned = stages.plan_text(ingested, planned, store, config)
    get_run_logger().info(text_planned.summary())
    return text_planned


@task(name="publish", **_TASK_OPTIONS)
def publish(ingested: stages.Ingested, checked: list[stages.StageOutput], planned: list[stages.StageOutput],
            store: str, config: BuildConfig) -> stages.Published:
    published = stages.publish(ingested, checked, planned, store, config)
    get_run_logger().info("published %s/%s: %d accepted + %d quarantined = %d ingested", published.name,
                          published.version_id, published.accepted, published.quarantined, published.ingested)
    if published.suite_failures:
        get_run_logger().warning("published although %d Great Expectations expectation(s) failed (checks.gx: warn); "
                                 "see %s", len(published.suite_failures), published.data_docs_path)
    return published


def task_runner_for(config: RunnerConfig):
    """The Prefect task runner the config asks for: threads here, or Dask (an existing cluster or a
    LocalCluster of worker processes)."""
    if config.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        # loopback only: a LocalCluster's scheduler and workers serve nobody else (no dashboard either)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.dask_workers, "processes": True,
                                              "threads_per_worker": config.dask_threads_per_worker,
                                              "dashboard_address": None, "host": "127.0.0.1"})
    return ThreadPoolTaskRunner(max_workers=config.max_workers or os.cpu_count() or 1)


@flow(name="build-interleaved-shards", log_prints=True)
def build_shards(manifest: str, text_corpus: str | None, store: str, config: BuildConfig) -> stages.Published:
    """The shard DAG, run under the task runner `build_interleaved` chose."""
    ingested = ingest(manifest, text_corpus, store, config)
    resumed = resume(ingested, store, config)
    progress.shards(len(ingested.shards), len(resumed.finished))
    shards = resumed.pending  # shards whose whole chain is cached are not submitted again
    store_, config_ = unmapped(store), unmapped(config)
    normalized = normalize.map(shards, store_, config_)
    aligned = align.map(shards, normalized, store_, config_)
    checked = check.map(shards, normalized, aligned, store_, config_)
    planned = plan.map(shards, checked, store_, config_)
    for stage, futures in (("normalize", normalized), ("align", aligned), ("check", checked), ("plan", planned)):
        progress.follow(stage, futures, get_run_logger())  # bars and per-shard log lines, from this process
    for futures in (normalized, aligned):  # a failed shard raises its own error, not its dependents' "not ready"
        futures.result()
    checked, planned = stages.in_shard_order(ingested, resumed, checked.result(), planned.result())
    text_planned = plan_text(ingested, planned, store, config)  # text-only sequences (strategy mixed)
    published = publish(ingested, checked, [*planned, text_planned], store, config)
    progress.published()
    return published


@flow(name="build-interleaved", log_prints=True)
def build_interleaved(
    manifest: str | None = None,
    store: str = "./data",
    config_path: str | None = None,
    name: str | None = None,
    text_corpus: str | None = None,
    shard_size: int | None = None,
    runner: str | None = None,
    role: str | None = None,
    allow_roots: list[str] | None = None,
) -> stages.Published:
    """Build and publish an interleaved dataset version.

    manifest: a Lhotse manifest (cuts, or supervisions beside recordings), a NeMo JSONL manifest or a
      directory of audio files with .txt transcripts; None builds the embedded demo corpus.
    store: root of the versioned dataset store.  config_path: YAML build config (None: the demo config).
    name: dataset name (overrides the config's).  text_corpus: domain text, `domain<TAB>sentence` lines.
    shard_size: utterances per shard task (overrides the config's).  runner: local | dask (overrides
      the config's runner.kind).  role: train | dev | test (overrides the config's; held-out versions are
      never a default of any command).  allow_roots: more directories audio may come from (added to the
      config's ingest.allowed_roots; absolute, or relative to the manifest's directory).
    """
    config = load_config(config_path, name=name, shard_size=shard_size, role=role)
    if allow_roots:
        roots = (*config.ingest.allowed_roots, *allow_roots)
        config = config.model_copy(update={"ingest": config.ingest.model_copy(update={"allowed_roots": roots})})
    if runner is not None:
        config = config.model_copy(update={"runner": config.runner.model_copy(update={"kind": runner})})
        config = type(config).model_validate(config.model_dump())  # re-validate the override
    if manifest is None:
        manifest, text_corpus = stages.demo_corpus(store, text_corpus)
        # the demo corpus keeps its Lhotse manifests in lhotse/, beside its audio/
        ingest = config.ingest.model_copy(update={"allowed_roots": (*config.ingest.allowed_roots, "../audio")})
        config = config.model_copy(update={"ingest": ingest})
    return build_shards.with_options(task_runner=task_runner_for(config.runner))(manifest, text_corpus, store, config)
