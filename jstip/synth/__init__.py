"""The demo corpus generator (`jstip synth`, `make demo`): entity-rich medical and banking speech spoken by
espeak-ng, with ground-truth word timings, Lhotse and NeMo manifests and a domain text corpus.

Not a build stage: it makes input for builds (the embedded demo corpus, test fixtures, benchmarks).
`sentences`: the scripts (templates, entities, voice settings); `corpus`: synthesis and the files written;
`demo`: the embedded demo corpus and the demo's held-out test set, synthesised into a store once.
"""

from jstip.synth.corpus import (SynthResult, WordTiming, reference_word_timings, synthesize_corpus,
                                synthesize_in_fresh_process)
from jstip.synth.sentences import (DOMAINS, EDGE_SILENCE_S, NOVEL_FILLERS, PITCH, PITCH_RANGE, RATE_WPM, VOICES,
                                   DemoUtterance, compose_sentence, demo_utterances, fill_template,
                                   spoken_number, text_corpus_sentences)

__all__ = ["DOMAINS", "EDGE_SILENCE_S", "NOVEL_FILLERS", "PITCH", "PITCH_RANGE", "RATE_WPM", "VOICES", "DemoUtterance",
           "SynthResult", "WordTiming", "compose_sentence", "demo_utterances", "fill_template",
           "reference_word_timings", "spoken_number", "synthesize_corpus", "synthesize_in_fresh_process",
           "text_corpus_sentences"]
