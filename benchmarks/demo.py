"""Benchmark: the whole `make demo` after the install (`jstip demo` on a fresh store), timed, with what the
demo model reaches on the held-out demo test set (issue #17: WER <= 0.35 and entity accuracy >= 0.5 with the
best decoding, in <= 5 minutes on 2 cores).

    .venv/bin/python benchmarks/demo.py [--store DIR] [--write]

Runs `.venv/bin/jstip demo --store <fresh dir>` as a child process (its output goes to `<out>/demo_output.txt`)
and measures its wall time and the CPU seconds of the child and everything it started. Then it reads the
store: the promoted model's eval results on `demo-test` per decoding, the phases' durations from the
Prefect flow runs' log lines, and the machine's load average (2 cores are shared here: the wall time is
only comparable on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()

from _report import REPO, write_section  # noqa: E402  (benchmarks/ is the script's directory)

SECTION = "demo"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "demo"
BUDGET_S = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None, help="the demo's store (default: a fresh temporary dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="jstip-demo-") if args.store is None else None
    store = Path(tmp.name) / "data" if tmp else args.store.resolve()
    jstip = Path(sys.executable).with_name("jstip")
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with (args.out / "demo_output.txt").open("w") as out:
        done = subprocess.run([str(jstip), "demo", "--store", str(store)], stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO, env={**os.environ, "COLUMNS": "160"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"jstip demo failed ({done.returncode}); see {args.out / 'demo_output.txt'}")
    results = collect(store, (args.out / "demo_output.txt").read_text())
    results.update(wall_s=wall, cpu_s=cpu, load_before=load_before, load_after=os.getloadavg(),
                   machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if tmp:
        tmp.cleanup()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    body = render(results)
    print(body)
    if args.write:
        write_section(SECTION, body)


def collect(store: Path, output: str) -> dict:
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    promoted = registry.promoted("nightly")
    decision = registry.promotions("nightly").to_pylist()[-1]
    evidence = json.loads(decision["evidence_json"])
    rows = [r for r in registry.eval_results(model_id=promoted.model_id).to_pylist()
            if r["dataset_version"] == evidence["dataset_version"] and r["domain"] == "all"]
    overall: dict[str, dict[str, float]] = {}
    for r in rows:
        overall.setdefault(r["decoding"], {})[r["metric"]] = r["value"]
    prior = registry.model(promoted.parent_model) if promoted.parent_model else None
    # phase boundaries from Prefect's log lines: "HH:MM:SS.mmm | INFO | Flow run 'x' - Beginning flow run 'x' for flow 'name'"
    phases = {}
    for match in re.finditer(r"^(\d\d:\d\d:\d\d\.\d+) \| INFO +\| Flow run '[^']+' - Beginning (?:sub)?flow run "
                             r"'[^']+' for flow '([^']+)'", output, re.M):
        phases.setdefault(match.group(2), match.group(1))
    return {"model_id": promoted.model_id, "steps": promoted.config["steps"], "train_s": promoted.metrics["train_seconds"],
            "prior": prior.model_id if prior else None,
            "prior_metrics": prior.metrics if prior else None, "overall": overall,
            "test_set": evidence["test_set"], "test_version": evidence["dataset_version"], "flow_starts": phases,
            "promotion": decision["reason"]}


def render(results: dict) -> str:
    overall = results["overall"]
    best = min(overall, key=lambda d: overall[d]["wer"])
    any_row = overall[best]
    rows = "\n".join(f"| {d}{' (best)' if d == best else ''} | {o['wer']:.3f} | {o['entity_accuracy']:.3f} | "
                     f"{o['eer']:.3f} | {o['hallucination_rate']:.3f} |" for d, o in overall.items())
    ok = overall[best]["wer"] <= 0.35 and overall[best]["entity_accuracy"] >= 0.5
    load = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    return f"""`.venv/bin/python benchmarks/demo.py --write`

`jstip demo` (what `make demo` runs after the install) on a fresh store: synthesis and build of 400 utterances, the LM prior, the held-out test set ({results['test_set']}: {int(any_row['utterances'])} utterances, {int(any_row['ref_words'])} words, {int(any_row['entity_occurrences'])} entity mentions), training ({results['steps']} steps, {results['train_s']:.0f} s), evaluation and promotion. {results['machine']}.

| measure | value |
|---|---|
| wall time | {results['wall_s']:.0f} s ({results['wall_s'] / 60:.1f} min; budget {BUDGET_S / 60:.0f} min) |
| CPU time (all processes) | {results['cpu_s']:.0f} s |
| load average before / after (1, 5, 15 min) | {load(results['load_before'])} / {load(results['load_after'])} |
| best decoding reaches the target (WER <= 0.35, entity accuracy >= 0.5) | {'yes' if ok else 'no'} |

| decoding | WER | entity accuracy | EER | hallucination rate |
|---|---|---|---|---|
{rows}

Promotion: {results['promotion']}
"""


if __name__ == "__main__":
    main()
