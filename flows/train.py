"""Flow `train`: a published dataset version in, a trained speech-LLM registered in the catalog out.

    resolve dataset version -> train (resuming from the model's last checkpoint) -> register in `models`

With nproc_per_node > 1 (or nnodes > 1) the training task launches a distributed job with torchrun (DDP or
FSDP2, jstip.model.distributed) and waits for it; its output goes to the task's log.

The logic lives in jstip.model.training; this module only wires it for Prefect (run history, retries,
deployments such as the nightly retraining loop).
"""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402

from jstip.model.config import load_train_config, with_base_llm  # noqa: E402
from jstip.model import training  # noqa: E402
from jstip.model.distributed import LaunchSpec  # noqa: E402
from jstip.model.sequence_pools import resolve_version  # noqa: E402
from jstip.storage.store import DatasetStore  # noqa: E402


@task(name="resolve-dataset-version", cache_policy=NONE, persist_result=False)
def resolve_dataset_version(store: str, dataset_version: str | None, allow_test_set: bool = False) -> str:
    chosen = DatasetStore(store).training_version(dataset_version, allow_held_out=allow_test_set)
    return resolve_version(DatasetStore(store), chosen.version_id).version_id


# A killed or failed run resumes from its last checkpoint on retry (same model id, same checkpoints); a
# distributed one is launched again and resumes the same way.
@task(name="train-model", cache_policy=NONE, persist_result=False, retries=1)
def train_model(store: str, dataset_version: str, config_path: str | None, steps: int | None,
                init_model: str | None, name: str, allow_test_set: bool = False, base_llm: str | None = None,
                launch: LaunchSpec | None = None) -> training.TrainResult:
    logger = get_run_logger()
    if launch is not None and launch.distributed:
        return training.launch_training(store, dataset_version, launch, config_path=config_path, steps=steps,
                                        init_model=init_model, name=name, base_llm=base_llm,
                                        allow_test_set=allow_test_set, on_line=logger.info)
    config = with_base_llm(load_train_config(config_path, steps=steps), base_llm)
    return training.train(store, dataset_version, config, init_model=init_model, name=name, on_log=logger.info,
                          allow_test_set=allow_test_set)


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
    nproc_per_node: int = 1,
    nnodes: str = "1",
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
) -> training.TrainResult:
    """Train a speech-LLM on a dataset version and register it.

    store: the dataset store.  dataset_version: id, unique prefix or dataset name (None: the newest training
    version; a held-out dev/test version only with allow_test_set).
    config_path: YAML training config (None: the CPU defaults, jstip.model.config).  steps: override the
    config's steps.  init_model: a registered model id to continue from (None: from scratch).
    name: the model family name in the catalog.  base_llm: the LLM to start from, overriding the config's
    model.llm.path: an LM prior's model id (`jstip pretrain-lm`), a hub id or a local directory.
    nproc_per_node: training processes on this machine (one per GPU; > 1: a torchrun job, DDP or FSDP2 as
    the config's distributed.sharding says).  nnodes / rdzv_endpoint: several machines (each runs this
    flow, or torchrun by hand, with the same values; rdzv_endpoint = host:port of one of them).
    max_restarts: torchrun restarts the job this many times after a failure (each restart resumes from the
    last checkpoint).
    """
    launch = LaunchSpec(nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                        max_restarts=max_restarts)
    version = resolve_dataset_version(store, dataset_version, allow_test_set)
    result = train_model(store, version, config_path, steps, init_model, name, allow_test_set, base_llm, launch)
    get_run_logger().info("model %s trained on %s: %s", result.model_id, result.dataset_version, result.model_dir)
    return result
