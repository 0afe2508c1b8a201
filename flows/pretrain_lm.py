"""Flow `pretrain-lm`: a dataset version's domain text + general English in, an LLM prior registered in
the catalog out.

    resolve dataset version -> pretrain the tiny LM (domain text + sentences sampled from the pocketsphinx
    trigram LM) -> register in `models` (name `lm-prior`, dataset_version = the version it read)

The logic lives in jstip.model.pretraining; a speech-LLM starts from the result with
`model.llm.path: <model id>` (jstip train / the train flow's `base_llm`).
"""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402

from jstip.model.config import load_pretrain_config  # noqa: E402
from jstip.storage.store import DatasetStore  # noqa: E402
from jstip.model import pretraining  # noqa: E402
from jstip.model.sequence_pools import resolve_version  # noqa: E402

_TASK_OPTIONS = dict(cache_policy=NONE, persist_result=False)


@task(name="resolve-dataset-version", **_TASK_OPTIONS)
def resolve_dataset_version(store: str, dataset_version: str | None) -> str:
    return resolve_version(DatasetStore(store), dataset_version).version_id


# The model id is a content hash: a retry or rerun of a finished prior returns it without training.
@task(name="pretrain-lm", retries=1, **_TASK_OPTIONS)
def pretrain(store: str, dataset_version: str, config_path: str | None, steps: int | None,
             general_sentences: int | None, name: str) -> pretraining.PretrainResult:
    config = load_pretrain_config(config_path, steps=steps, general_sentences=general_sentences)
    return pretraining.pretrain_lm(store, dataset_version, config, name=name, on_log=get_run_logger().info)


@flow(name="pretrain-lm", log_prints=True)
def pretrain_lm(
    store: str = "./data",
    dataset_version: str | None = None,
    config_path: str | None = None,
    steps: int | None = None,
    general_sentences: int | None = None,
    name: str = "lm-prior",
) -> pretraining.PretrainResult:
    """Pretrain an LLM prior on a dataset version's domain text plus general English and register it.

    store: the dataset store.  dataset_version: id or unique prefix whose domain text to read (None: the
    latest published).  config_path: YAML pretraining config (None: jstip.model.config.PretrainConfig
    defaults).  steps / general_sentences: override the config's.  name: the model name in the catalog.
    """
    version = resolve_dataset_version(store, dataset_version)
    result = pretrain(store, version, config_path, steps, general_sentences, name)
    get_run_logger().info("LM prior %s pretrained on %s: %s", result.model_id, result.dataset_version,
                          result.model_dir)
    return result
