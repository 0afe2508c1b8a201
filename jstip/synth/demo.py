"""The embedded demo corpus: what `jstip demo`, `make demo` and the `build-interleaved` flow build when given no
manifest, and the held-out test set of the demo's nightly loop. Synthesised into the store once (it is
deterministic)."""

from __future__ import annotations

from pathlib import Path

from jstip.synth.corpus import synthesize_corpus

DEMO_UTTERANCES = 400  # enough speech for the demo model to transcribe (BENCHMARKS.md "demo recipe")
DEMO_SEED = 0
DEMO_TEST_UTTERANCES = 40
DEMO_TEST_SEED = 1000  # far from DEMO_SEED: no utterance of the test set repeats a training one


def demo_corpus(store: str, text_corpus: str | None = None) -> tuple[str, str]:
    """Synthesise the embedded demo corpus into the store (once; it is deterministic) and return
    (manifest, text corpus) paths."""
    out = Path(store).resolve() / "demo_corpus"
    cuts = out / "lhotse" / "demo_cuts_all.jsonl.gz"
    if not cuts.exists():
        synthesize_corpus(out, utterances=DEMO_UTTERANCES, seed=DEMO_SEED)
    return str(cuts), text_corpus or str(out / "text_corpus.tsv")


def demo_test_corpus(store: str) -> str:
    """The demo's held-out test set: DEMO_TEST_UTTERANCES more synthetic utterances of the same domains,
    drawn with another seed (other voices, fillers and entities), synthesised into the store once."""
    out = Path(store).resolve() / "demo_corpus_test"
    manifest = out / "nemo_manifest.jsonl"  # NeMo JSONL beside the audio: inside the default allowed root
    if not manifest.exists():
        result = synthesize_corpus(out, utterances=DEMO_TEST_UTTERANCES, seed=DEMO_TEST_SEED)
        assert result.nemo_manifest == manifest, result.nemo_manifest
    return str(manifest)
