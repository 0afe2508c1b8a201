"""Commands over models: train, pretrain-lm, evaluate, and inspect (models list/show, evals)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from jstip.cli.common import (StoreOption, app, command_name, console, fail, models_app, one_line_errors,
                              print_relation, running_flows, say)


def _metric_text(metric: str, value: float) -> str:
    if metric.endswith(("wer", "eer", "accuracy", "rate")):
        return f"{value:.4f}"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


EVAL_SUMMARY_METRICS = ["utterances", "wer", "entity_accuracy", "eer", "hallucination_rate"]


def _print_eval_summary(results, metrics: list[str], title: str | None = None, with_model: bool = True) -> None:
    """Eval result rows pivoted: one row per (model,) test set, decoding, dataset version and domain."""
    keys = ["model_id"] * with_model + ["test_set", "decoding", "dataset_version", "domain"]
    groups: dict[tuple, dict[str, float]] = {}
    for row in results.to_pylist():
        groups.setdefault(tuple(row[k] for k in keys), {})[row["metric"]] = row["value"]
    print_relation(["model"] * with_model + ["test set", "decoding", "dataset version", "domain", *metrics],
                   [(*key, *(_metric_text(m, values[m]) if m in values else None for m in metrics))
                    for key, values in groups.items()], title=title)


@models_app.command("list")
def models_list(
    store: StoreOption = Path("data"),
    name: Annotated[Optional[str], typer.Option(help="Only models of this name.")] = None,
):
    """List registered models, oldest first, with the channels that have promoted them."""
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    models = registry.models(name)
    if not models:
        console.print(f"no models registered in {registry.store.catalog_path}")
        return
    channels: dict[str, list[str]] = {}
    for channel, model_id in registry.channels().items():
        channels.setdefault(model_id, []).append(channel)
    print_relation(
        ["model", "name", "dataset version", "parent", "created (UTC)", "promoted on", "path"],
       [(m.model_id, m.name, m.dataset_version, m.parent_model, m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
         ", ".join(channels.get(m.model_id, [])), m.path) for m in models],
    )


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="Model id (or a unique prefix).")],
    store: StoreOption = Path("data"),
):
    """Show one model: lineage, checkpoint, training metrics, overall eval results and config."""
    import pyarrow.compute as pc

    from jstip.storage import StoreError
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    with one_line_errors(StoreError):
        m = registry.model(model)
        results = registry.eval_results(m.model_id)
    channels = [channel for channel, model_id in registry.channels().items() if model_id == m.model_id]
    say((f"{m.name}/{m.model_id}", "bold"))
    console.print(f"trained on:  {m.dataset_version}   parent: {m.parent_model or 'none'}")
    console.print(f"created:     {m.created_at.isoformat()}")
    console.print(f"path:        {m.path}")
    console.print(f"promoted on: {', '.join(channels) or 'none'}")
    if m.metrics:
        print_relation(["metric", "value"], sorted(m.metrics.items()), title="training metrics")
    overall = results.filter(pc.equal(results["domain"], "all"))
    if overall.num_rows:
        _print_eval_summary(overall, EVAL_SUMMARY_METRICS, title="eval results (all domains)", with_model=False)
    else:
        console.print("eval results: none recorded")
    console.print("config:")
    console.print_json(m.config_json)


@app.command()
def evals(
    store: StoreOption = Path("data"),
    model: Annotated[Optional[str], typer.Option("--model", help="Only this model (id or a unique prefix).")] = None,
    test_set: Annotated[Optional[str], typer.Option("--test-set", help="Only this test set.")] = None,
    metric: Annotated[Optional[list[str]], typer.Option(
        "--metric", "-m", help=f"Metric columns (repeat for several; default: {', '.join(EVAL_SUMMARY_METRICS)}). "
                               "Every row: jstip query 'SELECT * FROM eval_results'.")] = None,
):
    """Eval results of registered models: one row per model, test set, decoding, dataset version and domain."""
    from jstip.storage import StoreError
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    with one_line_errors(StoreError):
        results = registry.eval_results(model, test_set)
    if not results.num_rows:
        console.print(f"no eval results in {registry.store.catalog_path}"
                      + (f" for model {model}" if model else "") + (f" on test set {test_set}" if test_set else ""))
        return
    _print_eval_summary(results, metric or EVAL_SUMMARY_METRICS)


@app.command()
def train(
    store: StoreOption = Path("data"),
    version: Annotated[Optional[str], typer.Option("--version", help="Dataset version id, prefix or dataset name "
                                                                     "(default: the newest training version).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML training config (default: the CPU demo model, "
                                                        "jstip.model.config).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Override the config's number of steps.")] = None,
    init_model: Annotated[Optional[str], typer.Option(help="Registered model id to continue training from.")] = None,
    name: Annotated[str, typer.Option(help="Model family name in the catalog.")] = "jstip",
    allow_test_set: Annotated[bool, typer.Option("--allow-test-set", help="Train on a held-out (dev or test) "
                                                 "version anyway; it can no longer judge the model.")] = False,
    base_llm: Annotated[Optional[str], typer.Option(
        "--base-llm", help="The LLM to start from, overriding the config's model.llm.path: an LM prior's model id "
                           "(jstip pretrain-lm), a hub id or a local transformers directory.")] = None,
    nproc_per_node: Annotated[int, typer.Option(
        "--nproc-per-node", min=1, help="Training processes on this machine (one per GPU): > 1 runs torchrun "
                                        "with DDP, or FSDP2 (the config's distributed.sharding).")] = 1,
    nnodes: Annotated[str, typer.Option(
        "--nnodes", help="Machines (N, or MIN:MAX): run the same command on each, with --rdzv-endpoint.")] = "1",
    rdzv_endpoint: Annotated[Optional[str], typer.Option(
        "--rdzv-endpoint", help="host:port of the rendezvous (one of the machines), the same on every "
                                "machine.")] = None,
    max_restarts: Annotated[int, typer.Option(
        "--max-restarts", min=0, help="torchrun restarts the job this many times after a failure, each time "
                                      "resuming from the last checkpoint.")] = 0,
    result_file: Annotated[Optional[Path], typer.Option(hidden=True, help="Under torchrun: where each machine's "
                                                                          "local rank 0 writes the result (JSON).")] = None,
):
    """Train a speech-LLM on a dataset version (Prefect flow `train`); resumes from the last checkpoint.

    Under torchrun (`torchrun --nproc-per-node 8 -m jstip train ...`) each worker runs this command as one
    rank of a DDP/FSDP2 job, without Prefect; `--nproc-per-node N` runs exactly that from the train flow.
    """
    from jstip.model.config import TrainConfigError, load_train_config
    from jstip.storage.store import StoreError
    from jstip.model.distributed import DistributedTrainingError, LaunchSpec, under_launcher
    from jstip.model.sequence_pools import DatasetError, resolve_version
    from jstip.storage import DatasetStore

    # validate at the edge: a bad config or version is one line, not a failed flow run
    with one_line_errors(TrainConfigError, DatasetError, StoreError, ValueError):
        load_train_config(config, steps=steps)
        if not under_launcher():  # under torchrun, rank 0 alone reads the catalog (jstip.model.training)
            chosen = DatasetStore(store).training_version(version, allow_held_out=allow_test_set)
            resolve_version(DatasetStore(store), chosen.version_id)
        launch = LaunchSpec(nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                            max_restarts=max_restarts)
    if under_launcher():
        if launch.distributed:
            fail("already running under torchrun: give --nproc-per-node / --nnodes to torchrun, not to jstip train")
        _train_rank(store, version, config, steps, init_model, name, base_llm, allow_test_set, result_file)
        return
    from jstip.flows.train import train as train_flow

    with one_line_errors(DatasetError, StoreError, DistributedTrainingError):
        with running_flows("training", "rerun the same command to resume from the last checkpoint.",
                           expected=(DistributedTrainingError,)):
            result = train_flow(store=str(store), dataset_version=version,
                                config_path=None if config is None else str(config), steps=steps,
                                init_model=init_model, name=name, allow_test_set=allow_test_set, base_llm=base_llm,
                                nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                                max_restarts=max_restarts)
    _print_trained(result)


def _print_trained(result) -> None:
    say(("model", "bold green"), f" {result.model_id}  trained on dataset version {result.dataset_version}")
    console.print(f"final loss {result.metrics.get('final_loss', float('nan')):.4f} after {result.steps} steps")
    console.print(f"model:  {result.model_dir}")
    console.print(f"log:    {result.model_dir.parent / 'train_log.csv'}")


def _train_rank(store: Path, version: str | None, config: Path | None, steps: int | None, init_model: str | None,
                name: str, base_llm: str | None, allow_test_set: bool, result_file: Path | None) -> None:
    """One rank of a torchrun job: train in this process; rank 0 prints, each machine's local rank 0 writes
    the result file (the launching flow reads it)."""
    import os

    from torch.distributed.elastic.multiprocessing.errors import record

    from jstip.model.config import load_train_config, with_base_llm
    from jstip.storage.store import StoreError
    from jstip.model.distributed import DistributedTrainingError
    from jstip.model.sequence_pools import DatasetError
    from jstip.model.training import train as train_task

    rank = int(os.environ["RANK"])

    @record  # torchrun's summary then carries this rank's traceback
    def run():
        train_config = with_base_llm(load_train_config(config, steps=steps), base_llm)
        return train_task(store, version, train_config, init_model=init_model, name=name,
                          allow_test_set=allow_test_set,
                          on_log=lambda line: console.print(line, highlight=False, soft_wrap=True))

    try:
        result = run()
    except (DatasetError, StoreError, DistributedTrainingError) as e:
        fail(f"rank {rank}: {e}")
    if result_file is not None and os.environ.get("LOCAL_RANK") == "0":
        tmp = result_file.with_name(result_file.name + ".tmp")
        tmp.write_text(result.to_json())
        tmp.rename(result_file)
    if rank == 0:
        _print_trained(result)


@app.command("pretrain-lm")
def pretrain_lm(
    store: StoreOption = Path("data"),
    version: Annotated[Optional[str], typer.Option("--version", help="Dataset version whose domain text to read: "
                                                                     "id, prefix or dataset name (default: the newest "
                                                                     "training version; never a held-out set).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML pretraining config (default: "
                                                        "jstip.model.config.PretrainConfig).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Override the config's number of steps.")] = None,
    general_sentences: Annotated[Optional[int], typer.Option(
        min=0, help="General English sentences sampled from the pocketsphinx trigram LM (0: domain text only).")
                                ] = None,
    name: Annotated[str, typer.Option(help="Model name in the catalog.")] = "lm-prior",
):
    """Pretrain an LLM prior (flow `pretrain-lm`) on a version's domain text plus general English sampled
    offline; train from it with `jstip train --base-llm MODEL`."""
    from jstip.flows.pretrain_lm import pretrain_lm as pretrain_flow
    from jstip.model.config import TrainConfigError, load_pretrain_config
    from jstip.storage import DatasetStore
    from jstip.storage.store import StoreError
    from jstip.model.sequence_pools import DatasetError, resolve_version

    with one_line_errors(TrainConfigError, DatasetError, StoreError):  # validate at the edge
        load_pretrain_config(config, steps=steps, general_sentences=general_sentences)
        chosen = DatasetStore(store).version(version)
        if chosen.held_out:  # its text would leak into every model built on the prior
            fail(f"dataset version {chosen.name}/{chosen.version_id} is a held-out {chosen.role} set: an LM prior "
                 "pretrained on its text would leak it into every model it judges. Name a training version "
                 "(`jstip catalog list`).")
        resolve_version(DatasetStore(store), chosen.version_id)
    with one_line_errors(DatasetError, StoreError, ValueError):
        with running_flows("LM pretraining", "rerun the same command to start it again."):
            result = pretrain_flow(store=str(store), dataset_version=version,
                                   config_path=None if config is None else str(config), steps=steps,
                                   general_sentences=general_sentences, name=name)
    m = result.metrics
    say(("LM prior", "bold green"), f" {result.model_id}  pretrained on the domain text of "
                 f"{result.dataset_version} ({m['domain_sentences']} sentences) + {m['general_sentences']} general "
                 "English sentences")
    console.print(f"loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}; held-out loss (nats/token): domain "
                  f"{m['domain_val_loss'] if m['domain_val_loss'] is None else round(m['domain_val_loss'], 3)}, "
                  f"general {m['general_val_loss'] if m['general_val_loss'] is None else round(m['general_val_loss'], 3)}")
    console.print(f"model:  {result.model_dir}")
    console.print(f"train from it: {command_name()} train --store {store} --base-llm {result.model_id}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Registered model id (or a unique prefix).")],
    store: StoreOption = Path("data"),
    test_version: Annotated[Optional[str], typer.Option(help="Test set: a version id, prefix or dataset name "
                                                             "(default: the newest version of role test).")] = None,
    test_set: Annotated[Optional[str], typer.Option(help="Name of the test set in eval_results (default: the "
                                                         "version's dataset name).")] = None,
    decoding: Annotated[Optional[list[str]], typer.Option(help="greedy | beam<N> | joint-ctc<lambda>-beam<N> | "
                                                               "ctc-greedy; repeatable (default with a CTC head: greedy, "
                                                               "ctc-greedy, joint-ctc0.3-beam4; without: greedy, beam4).")
                        ] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N utterances.")] = None,
):
    """Decode a test set with a registered model (Prefect flow `evaluate`); scores go to eval_results."""
    from jstip.flows.evaluate import evaluate as evaluate_flow
    from jstip.model.decode import DecodeOptions
    from jstip.storage import DatasetStore
    from jstip.storage.registry import ModelRegistry
    from jstip.storage.store import StoreError
    from jstip.model.sequence_pools import DatasetError, resolve_version

    with one_line_errors(StoreError, DatasetError, ValueError):  # validate at the edge
        record = ModelRegistry(store).model(model)
        data_store = DatasetStore(store)
        version = resolve_version(data_store, test_version or data_store.newest_test_set().version_id)
        for name in decoding or []:
            DecodeOptions.parse(name)
    # e.g. a test version whose files differ from what was published
    with one_line_errors(StoreError, DatasetError):
        with running_flows("evaluation", "nothing was recorded; rerun the command."):
            overall = evaluate_flow(record.model_id, store=str(store), test_version=version.version_id,
                                    test_set=test_set, decodings=decoding or None, limit=limit)
    metrics = ("utterances", "wer", "entity_accuracy", "eer", "insertions", "hallucinations")
    rows = [(name, *(f"{values[m]:.4g}" if m in values else "" for m in metrics)) for name, values in overall.items()]
    print_relation(["decoding", *metrics], rows,
                   title=f"model {record.model_id} on {test_set or version.name} ({version.version_id})")
    console.print(f"per domain: {command_name()} evals --model {record.model_id} --store {store}")
