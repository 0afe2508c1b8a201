"""`jstip demo`: the demo corpus through the whole DAG, then the downstream loop, and what it made."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jstip.cli.build import report_published, run_build
from jstip.cli.common import StoreOption, app, command_name, console, print_relation, running_flows, say

DECODING_MEANING = {
    "greedy": "the LLM alone, greedy",
    "ctc-greedy": "the CTC head alone (no LLM)",
}


def _decoding_meaning(name: str) -> str:
    if name in DECODING_MEANING:
        return DECODING_MEANING[name]
    if name.startswith("joint-"):
        return "CTC head + LLM, beam search (the model's decoding)"
    return f"the LLM alone, beam search ({name[4:]} beams)"


def print_downstream(store: Path, decision, prior=None) -> None:
    """What the demo's downstream loop made: the LM prior, the model, its scores on the held-out test set per
    decoding (with what each decoding and metric means), example transcripts, the promotion decision."""
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    model = registry.model(decision.candidate_id)
    evidence = decision.evidence or {}
    results = [r for r in registry.eval_results(model_id=model.model_id).to_pylist()
               if r["dataset_version"] == evidence.get("dataset_version") and r["domain"] == "all"]
    by_decoding: dict[str, dict[str, float]] = {}
    for r in results:
        by_decoding.setdefault(r["decoding"], {})[r["metric"]] = r["value"]
    if prior is not None:
        pm = prior.metrics
        say("\n", ("LM prior", "bold green"), f" {prior.model_id}: a {pm['parameters']:,}-parameter LM "
                     f"pretrained on the demo's domain text ({pm['domain_sentences']} sentences) + "
                     f"{pm['general_sentences']} general English sentences sampled from pocketsphinx's trigram LM")
    m = model.metrics
    say(("model", "bold green"), f" {model.model_id}: the speech-LLM trained "
                 f"{'from it ' if prior is not None else ''}on "
                 f"{model.dataset_version}, {model.config['steps']} steps (loss {m['first_loss']:.2f} -> "
                 f"{m['final_loss']:.2f}, {m['train_seconds'] / 60:.1f} min)")
    any_row = next(iter(by_decoding.values()), {})
    say("\n", ("held-out test set", "bold"), f" {evidence.get('test_set')} ({evidence.get('dataset_version')}): "
                 f"{int(any_row.get('utterances', 0))} utterances ({int(any_row.get('ref_words', 0))} words, "
                 f"{int(any_row.get('entity_occurrences', 0))} entity mentions) synthesised with another seed than "
                 "the training corpus: other voices, speaking rates, amounts, dates and names")
    order = ["greedy", "beam4", "ctc-greedy"] + sorted(d for d in by_decoding if d.startswith("joint-"))
    order = [d for d in order if d in by_decoding] + [d for d in by_decoding if d not in order]
    best = min(order, key=lambda d: by_decoding[d].get("wer", float("inf"))) if order else None
    metrics = ("wer", "entity_accuracy", "eer", "hallucination_rate")
    print_relation(["decoding", "what it is", "WER", "entity accuracy", "EER", "hallucinations"],
                   [(d + (" (best)" if d == best else ""), _decoding_meaning(d),
                     *(f"{by_decoding[d][k]:.3f}" if k in by_decoding[d] else "" for k in metrics)) for d in order])
    console.print("WER: word errors (substituted, deleted, inserted) per reference word; 0 is perfect, lower is better.\n"
                  "entity accuracy: share of entity mentions (drug names, doses, conditions, procedures, doctors, bank "
                  "products, merchants, amounts, dates, card digits) transcribed exactly; higher is better.\n"
                  "EER: word errors on entity words. hallucinations: share of hypotheses more than twice as long as "
                  "the reference.")
    if best is not None:
        examples = registry.eval_utterances(model.model_id, evidence["dataset_version"], best).to_pylist()[:3]
        console.print(f"\nexamples ({best}):")
        for row in examples:
            console.print(f"  reference:  {row['reference']}")
            console.print(f"  hypothesis: {row['hypothesis']}")
    console.print(f"\npromotion on channel nightly: {'promoted' if decision.promote else 'kept the incumbent'} "
                  f"({decision.reason})")


@app.command()
def demo(
    store: StoreOption = Path("data"),
    train: Annotated[bool, typer.Option("--train/--no-train", help="Also run the downstream loop: pretrain the LM "
                                                                  "prior, train the CPU demo speech-LLM, evaluate, "
                                                                  "promote.")] = True,
):
    """Synthesise the demo corpus, build it, show what was published; then pretrain an LM prior, train a small
    speech-LLM from it, evaluate it on a held-out test set and promote it (flows `pretrain-lm` and
    `nightly-retrain`; a few minutes on 2 cores)."""
    # one Prefect server for the build and the downstream flows
    with running_flows("demo", "rerun it to resume: built shards and training checkpoints are kept."):
        _run_demo(store, train)


def _run_demo(store: Path, train: bool) -> None:
    import time

    started = time.perf_counter()
    published = run_build(None, store, None, None, None, None)
    report_published(published, store)
    if not train:
        return
    from jstip.flows.nightly_retrain import nightly_retrain
    from jstip.flows.pretrain_lm import pretrain_lm as pretrain_flow

    say("\n", ("downstream:", "bold"), " pretrain an LM prior (flow pretrain-lm), then nightly-retrain: build the "
        "held-out test set, train from the prior, evaluate, promote")
    prior = pretrain_flow(store=str(store), dataset_version=published.version_id)
    decision = nightly_retrain(store=str(store), base_llm=prior.model_id)
    print_downstream(store, decision, prior)
    jstip = command_name()
    console.print(f"demo done in {(time.perf_counter() - started) / 60:.1f} min")
    console.print(f"try:           {jstip} models list --store {store}")
    console.print(f"               {jstip} evals --store {store}   (per domain)")
    console.print(f"               {jstip} query --store {store} 'SELECT reason FROM promotions'")
