"""Per-stage code identity (jstip.version): a stage's cache key hashes the code that stage runs, found by its
import graph. Tested from outside: the package is copied, one module of the copy is edited, and the copy
builds the same corpus again in a fresh interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jstip.synth import synthesize_corpus
from jstip.version import stage_code_version, stage_modules

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "normalize", "align", "check", "plan", "plan_text", "dedupe")

# A build in a fresh interpreter that imports jstip from the copy on PYTHONPATH (which comes before the
# installed package); prints where jstip came from, the version id and the stage identities.
_BUILD = """
import json, sys
import jstip
from jstip.config import load_config
from jstip.tasks.stages import build_in_process
from jstip.version import stage_code_version
manifest, text, store, config = sys.argv[1:5]
published = build_in_process(manifest, text, store, load_config(config, shard_size=2))
print(json.dumps({"package": jstip.__file__, "version_id": published.version_id,
                  "publish": stage_code_version("publish"), "normalize": stage_code_version("normalize")}))
"""


def _copy_package(into: Path) -> Path:
    # jstip/ links the top-level folders (jstip/tasks -> ../tasks): the copy holds their files
    shutil.copytree(REPO / "jstip", into / "jstip", ignore=shutil.ignore_patterns("__pycache__"))
    assert not (into / "jstip" / "tasks").is_symlink() and (into / "jstip" / "tasks" / "stages.py").is_file()
    return into


def _build(src: Path, corpus: dict, store: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", _BUILD, corpus["manifest"], corpus["text"], str(store),
                          corpus["config"]], env=env, cwd=src.parent, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(src), result["package"]  # the copy ran, not the install
    return result


def _stage_results(store: Path) -> dict[str, set[str]]:
    """The keys of every stage result in the store's stage cache."""
    work = store / "work"
    return {stage: {p.name for p in (work / stage).iterdir() if not p.name.startswith(".")} if (work / stage).is_dir()
            else set() for stage in STAGES}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A copy of the package and a store built with it from 3 synthetic utterances (2 shards)."""
    root = tmp_path_factory.mktemp("identity")
    synth = synthesize_corpus(root / "corpus", utterances=3, seed=11)
    config = root / "build.yaml"
    config.write_text("checks:\n  gx: off\n")  # the suites are not what is tested here: a faster build
    corpus = {"manifest": str(synth.nemo_manifest), "text": str(synth.text_corpus), "config": str(config)}
    src = _copy_package(root / "src")
    built = _build(src, corpus, root / "store")
    return {"root": root, "src": src, "store": root / "store", "corpus": corpus, "built": built,
            "results": _stage_results(root / "store")}


def _edited_copy(baseline, tmp_path: Path, module: str) -> tuple[Path, Path]:
    """The baseline's package and store, copied; `module` (a path in the package) edited in the copy."""
    src, store = tmp_path / "src", tmp_path / "store"
    shutil.copytree(baseline["src"], src)
    shutil.copytree(baseline["store"], store)  # a store is relocatable: the copy is a working store
    path = src / module
    path.write_text(path.read_text() + "\n\ndef _edited_for_the_test():  # a real change to the module's code\n"
                    "    return 1\n")
    return src, store


def test_editing_the_report_keeps_the_version_id_and_every_stage_cache(baseline, tmp_path):
    src, store = _edited_copy(baseline, tmp_path, "jstip/storage/report.py")

    rebuilt = _build(src, baseline["corpus"], store)

    assert rebuilt["version_id"] == baseline["built"]["version_id"]
    assert rebuilt["publish"] == baseline["built"]["publish"]
    assert _stage_results(store) == baseline["results"]  # not one stage ran again
    assert all(baseline["results"][stage] for stage in ("normalize", "align", "check", "plan"))


def test_editing_the_aligner_reruns_alignment_and_what_follows_not_normalisation(baseline, tmp_path):
    src, store = _edited_copy(baseline, tmp_path, "jstip/tasks/aligners/pocketsphinx.py")

    rebuilt = _build(src, baseline["corpus"], store)

    before, after = baseline["results"], _stage_results(store)
    assert rebuilt["version_id"] != baseline["built"]["version_id"]
    assert rebuilt["normalize"] == baseline["built"]["normalize"]
    assert after["ingest"] == before["ingest"] and after["normalize"] == before["normalize"]
    for stage in ("align", "check", "plan", "dedupe"):  # every shard aligned, checked and planned again
        assert before[stage] < after[stage] and len(after[stage] - before[stage]) == len(before[stage]), stage


def test_a_stage_hashes_the_modules_it_imports_and_no_others():
    pocketsphinx = ("jstip.tasks.aligners.pocketsphinx",)
    align = stage_modules("align", pocketsphinx)
    assert {"jstip.tasks.align", "jstip.tasks.aligners.pocketsphinx", "jstip.tasks.aligners.g2p",
            "jstip.tasks.aligners.textnorm", "jstip.tasks.checks", "jstip.tasks.stages"} <= align
    assert not align & {"jstip.tasks.aligners.nemo", "jstip.tasks.aligners.whisperx", "jstip.tasks.normalize"}
    assert "jstip.tasks.aligners.pocketsphinx" not in stage_modules("align", ("jstip.tasks.aligners.nemo",))
    normalize = stage_modules("normalize")
    assert "jstip.tasks.normalize" in normalize and not any(m.startswith("jstip.tasks.align") for m in normalize)
    for stage in STAGES + ("publish",):
        modules = stage_modules(stage)
        assert not modules & {"jstip.storage.report", "jstip.storage.export", "jstip.synth",
                              "jstip.flows.build_interleaved"}, stage
        # no build stage runs the command line or the model: editing either re-runs nothing
        assert not any(m.startswith(("jstip.cli", "jstip.model")) for m in modules), stage
    assert "jstip.storage.store" in stage_modules("publish") and "jstip.storage.store" not in normalize
    assert stage_code_version("align", pocketsphinx) != stage_code_version("align", ("jstip.tasks.aligners.nemo",))
