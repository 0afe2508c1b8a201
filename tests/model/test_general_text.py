"""General English from the pocketsphinx trigram LM: our reader of its binary trie agrees with pocketsphinx's
own scoring, and sampling is deterministic and yields plain sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jstip.model.general_text import NGramFormatError, default_lm, read_trie_lm, sample_sentences


@pytest.fixture(scope="module")
def lm():
    return default_lm()


def test_reader_agrees_with_pocketsphinx_on_every_kind_of_ngram(lm):
    from pocketsphinx import Config, LogMath, NGramModel

    from jstip.model.general_text import pocketsphinx_lm_path

    reference = NGramModel(Config(), LogMath(1.0001, 0, False), str(pocketsphinx_lm_path()))
    to_ln = math.log(1.0001)
    assert lm.vocab_size == 72547 and len(lm.bigram_word) == 2051541 and len(lm.trigram_word) == 1669625
    rng = np.random.default_rng(0)
    queries = [("the", ("of",)), ("of", ("rid",)), ("zulu", ("shaka",)), ("the", ("one", "of")),
               ("</s>", ("thank", "you"))]
    for _ in range(300):  # stored trigrams, their bigram backoffs, and random triples (unigram backoffs)
        k = int(rng.integers(len(lm.trigram_word)))
        history = int(np.searchsorted(lm.trigram_first, k, side="right")) - 1
        first = int(np.searchsorted(lm.bigram_first, history, side="right")) - 1
        u, v, w = lm.words[first], lm.words[int(lm.bigram_word[history])], lm.words[int(lm.trigram_word[k])]
        queries += [(w, (u, v)), (w, (v,)), (lm.words[int(rng.integers(lm.vocab_size))], (u, w))]
    for word, history in queries:
        if "<s>" in (word, *history[1:]):
            continue
        ours = lm.log_prob(word, history)
        theirs = reference.prob([word, *reversed(history)]) * to_ln  # pocketsphinx: word first, then history
        assert ours == pytest.approx(theirs, abs=2e-4), (word, history)
    assert math.exp(lm.log_prob("the", ("of",))) == pytest.approx(0.2, abs=0.01)  # "of the"


def test_sampling_is_deterministic_and_yields_plain_sentences(lm):
    sentences = sample_sentences(40, seed=3, lm=lm)
    assert sentences == sample_sentences(40, seed=3, lm=lm)
    assert sentences[:10] == sample_sentences(10, seed=3, lm=lm)  # a prefix of a longer list
    assert sentences != sample_sentences(40, seed=4, lm=lm)
    for sentence in sentences:
        words = sentence[:-1].split()
        assert sentence.endswith(".") and sentence[0].isupper() and 4 <= len(words) <= 24
        assert all(w.replace("'", "").isalpha() for w in words)
    # sampled from the LM, not from its unigrams: "of the" shows up far above the ~5 times independent
    # draws of the two words would give in ~4000 words
    text = " ".join(s.lower() for s in sample_sentences(400, seed=0, lm=lm))
    assert text.count(" of the ") > 12


def test_a_file_that_is_not_a_trie_lm_is_refused(tmp_path):
    bogus = tmp_path / "x.lm.bin"
    bogus.write_bytes(b"Darpa Trigram LM\n")
    with pytest.raises(NGramFormatError, match="not a pocketsphinx trie LM"):
        read_trie_lm(bogus)
