"""Flow `train`: a published dataset version in, a trained speech-LLM registered in the catalog out.

    resolve dataset version -> train (resuming from the model's last checkpoint) -> register in `models`

The logic lives in jstip.tasks.train; this module only wires it for Prefect (run history, retries,
deployments such as the nightly retraining loop).
"""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402

from jstip.model.config import TrainConfig, load_train_config  # noqa: E402
from jstip.tasks import train as training  # noqa: E402
from jstip.tasks.sequences import resolve_version  # noqa: E402
from jstip.storage.store import DatasetStore  # noqa: E402


def with_base_llm(config: TrainConfig, base_llm: str | None) -> TrainConfig:
    """The config with model.llm.path set to `base_llm` (an LM prior's model id, a hub id or a directory)."""
    if base_llm is None:
        return config
    return TrainConfig.model_validate({**config.model_dump(), "model": {
        **config.model.model_dump(), "llm": {**config.model.llm.model_dump(), "path": base_llm}}})


@task(name="resolve-dataset-version", cache_policy=NONE, persist_result=False)
def resolve_dataset_version(store: str, dataset_version: str | None, allow_test_set: bool = False) -> str:
    chosen = DatasetStore(store).training_version(dataset_version, allow_held_out=allow_test_set)
    return resolve_version(DatasetStore(store), chosen.version_id).version_id


# A killed or failed run resumes from its last checkpoint on retry (same model id, same checkpoints).
@task(name="train-model", cache_policy=NONE, persist_result=False, retries=1)
def train_model(store: str, dataset_version: str, config_path: str | None, steps: int | None,
                init_model: str | None, name: str, allow_test_set: bool = False,
                base_llm: str | None = None) -> training.TrainResult:
    config = with_base_llm(load_train_config(config_path, steps=steps), base_llm)
    return training.train(store, dataset_version, config, init_model=init_model, name=name,
                          on_log=get_run_logger().info, allow_test_set=allow_test_set)


@flow(name="train", log_prints=True)
def train(
    store: str = "./data",
    dataset_version: str | None = None,
    config_path: str | None = None,
    steps: int | None = None,
    init_model: str | None = None,
    name: str = "jstip",
    allow_test_set: bool = False,
    base_llm: str | None = None,
) -> training.TrainResult:
    """Train a speech-LLM on a dataset version and register it.

    store: the dataset store.  dataset_version: id, unique prefix or dataset name (None: the newest training
    version; a held-out dev/test version only with allow_test_set).
    config_path: YAML training config (None: the CPU defaults, jstip.model.config).  steps: override the
    config's steps.  init_model: a registered model id to continue from (None: from scratch).
    name: the model family name in the catalog.  base_llm: the LLM to start from, overriding the config's
    model.llm.path: an LM prior's model id (`jstip pretrain-lm`), a hub id or a local directory.
    """
    version = resolve_dataset_version(store, dataset_version, allow_test_set)
    result = train_model(store, version, config_path, steps, init_model, name, allow_test_set, base_llm)
    get_run_logger().info("model %s trained on %s: %s", result.model_id, result.dataset_version, result.model_dir)
    return result
