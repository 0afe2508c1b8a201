"""Eval metrics (jstip.model.metrics): exact figures on crafted pairs, each worked out by hand beside it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jstip.model.metrics import (
    METRICS,
    MetricRecord,
    WordErrorRate,
    normalize_for_wer,
    score_hypotheses,
    utterance_scores,
    word_error_rate,
)


@pytest.mark.parametrize("text, expected", [
    ("The Patient's FOLLOW-UP.", "the patient's follow up"),             # case, hyphen, final period
    ("O\u2019Brien\u2019s  \u2018quoted\u2019 word", "o'brien's quoted word"),  # curly apostrophes / quotes
    ("and/or, e.g. U.S.", "and or e g u s"),                             # slash; punctuation separates
    ("patients' rock 'n' roll", "patients rock n roll"),                 # edge apostrophes are quotes
    ("\uff21\uff22\uff23 \ufb01ne", "abc fine"),                         # NFKC: fullwidth letters, fi ligature
    ("\u201cHi\u201d \u2014 there!\t\n", "hi there"),                    # curly double quotes, em dash, whitespace
    ("$250 at 3.5%", "250 at 3 5"),                                      # numbers are not converted
    ("caf\u00e9 \u0928\u092e\u0938\u094d\u0924\u0947", "caf\u00e9 \u0928\u092e\u0938\u094d\u0924\u0947"),  # marks kept
    ("zero\u200bwidth", "zerowidth"),                                    # format characters dropped
    ("...", ""),
])
def test_normalize_for_wer(text, expected):
    assert normalize_for_wer(text) == expected


def test_normalize_for_wer_docstring_example():
    assert normalize_for_wer("Dr. O\u2019Brien\u2019s follow-up: 'Metformin', 500mg/day!") == \
        "dr o'brien's follow up metformin 500mg day"


def test_wer_ignores_case_and_punctuation():
    # both sides normalise to "the patient's follow up today": 5 hits
    assert word_error_rate(["The patient's follow-up, today."], ["the patient\u2019s follow up today"]) == \
        WordErrorRate(wer=0.0, substitutions=0, deletions=0, insertions=0, hits=5, ref_words=5)


def test_wer_counts_are_corpus_level():
    # "a b c d" vs "a x c d e": a=, b->x (S), c=, d=, +e (I): H3 S1 I1
    # "one two three" vs "one three": two deleted: H2 D1
    # totals H5 S1 D1 I1, ref words 4 + 3 = 7, WER (1+1+1)/7
    result = word_error_rate(["a b c d", "One two three."], ["a x c d e", "one three"])
    assert result == WordErrorRate(wer=3 / 7, substitutions=1, deletions=1, insertions=1, hits=5, ref_words=7)
    assert result.errors == 3


def test_empty_reference_counts_the_hypothesis_as_insertions():
    # "..." normalises to nothing: its 2 hypothesis words are insertions; "yes" vs "yes" 1 hit
    # WER = 2 / 1 reference word
    assert word_error_rate(["...", "Yes."], ["uh huh", "yes"]) == \
        WordErrorRate(wer=2.0, substitutions=0, deletions=0, insertions=2, hits=1, ref_words=1)
    # no reference words at all: no WER, the insertions still counted
    assert word_error_rate([""], ["hello there"]) == \
        WordErrorRate(wer=None, substitutions=0, deletions=0, insertions=2, hits=0, ref_words=0)
    assert word_error_rate([""], [""]) == WordErrorRate(None, 0, 0, 0, 0, 0)


def test_empty_hypothesis_deletes_every_reference_word():
    # 3 reference words, nothing recognised: D3, WER 3/3
    assert word_error_rate(["Take two tablets"], [""]) == WordErrorRate(1.0, 0, 3, 0, 0, 3)


def test_references_and_hypotheses_must_pair_up():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def _scores(reference, hypothesis, entities=(), domain="med"):
    rows = [{"utterance_id": "u1", "domain": domain, "reference": reference, "hypothesis": hypothesis,
             "entities": list(entities)}]
    return utterance_scores(rows).to_pylist()[0]


def _pick(scores: dict, *names):
    return tuple(scores[n] for n in names)


ENTITY = ("entity_occurrences", "entity_hits", "entity_occurrences_unlocated", "entity_words", "entity_errors")


def test_repeated_entity_needs_each_occurrence():
    # ref: metformin(0) in the morning and metformin(5) at night; "Metformin" listed twice = 2 occurrences of
    # one entity (case ignored). hyp has "metformin" once (the second is "met forming"): hits min(2, 1) = 1.
    # Entity words: ref 0 and 5 = 2. Alignment: metformin(5) -> met (S), +forming (I) next to it: 2 errors.
    s = _scores("Metformin in the morning and metformin at night", "metformin in the morning and met forming at night",
                ["Metformin", "metformin"])
    assert _pick(s, *ENTITY) == (2, 1, 0, 2, 2)
    assert _pick(s, "ref_words", "hits", "substitutions", "deletions", "insertions") == (8, 7, 1, 0, 1)
    # listed once, said twice in the hypothesis: still one hit (min(1, 2)); only the first mention is the
    # entity's in the reference, so ref word 5 is no entity word and its errors are not entity errors
    s = _scores("Metformin in the morning and metformin at night", "metformin in the morning and met forming at night",
                ["Metformin"])
    assert _pick(s, *ENTITY) == (1, 1, 0, 1, 0)
    # listed twice, both recovered
    s = _scores("metformin and metformin", "Metformin, and metformin.", ["metformin", "metformin"])
    assert _pick(s, *ENTITY) == (2, 2, 0, 2, 0)


def test_entity_split_across_a_substitution():
    # ref: flights to new(2) york(3) city(4) today; entity "New York City" = 3 entity words.
    # hyp: york -> work (S): the entity is not recovered (0 hits); 1 entity error of 3 words.
    s = _scores("Flights to New York City today", "flights to new work city today", ["New York City"])
    assert _pick(s, *ENTITY) == (1, 0, 0, 3, 1)
    assert _pick(s, "substitutions", "insertions") == (1, 0)


def test_insertions_inside_and_next_to_an_entity_count_for_it():
    # ref: pay with visa(2) gold(3) card; entity "Visa Gold" = 2 entity words
    # "uh" inserted between visa and gold (both entity words): 1 entity error; "visa gold" no longer in hyp
    s = _scores("Pay with Visa Gold card", "pay with visa uh gold card", ["Visa Gold"])
    assert _pick(s, *ENTITY) == (1, 0, 0, 2, 1)
    # "the" inserted between with (not entity) and visa (entity): touches the entity, 1 error; still a hit
    s = _scores("Pay with Visa Gold card", "pay with the visa gold card", ["Visa Gold"])
    assert _pick(s, *ENTITY) == (1, 1, 0, 2, 1)
    # "um" inserted before pay: next to no entity word, no entity error (but a word insertion)
    s = _scores("Pay with Visa Gold card", "um pay with visa gold card", ["Visa Gold"])
    assert _pick(s, *ENTITY) == (1, 1, 0, 2, 0)
    assert s["insertions"] == 1


def test_entity_not_in_the_reference_is_unlocated():
    # "Ozempic" is listed but not in the reference: 1 occurrence, hit because the hypothesis has it,
    # unlocated 1, no entity words to score for EER
    s = _scores("take the pill", "take the ozempic pill", ["Ozempic", "..."])  # "..." normalises to nothing
    assert _pick(s, *ENTITY) == (1, 1, 1, 0, 0)


@pytest.mark.parametrize("ref_words, hyp_words, hallucination", [
    (3, 11, False), (3, 12, True),    # max(2*3, 3+8) = 11
    (0, 8, False), (0, 9, True),      # max(0, 8) = 8
    (10, 20, False), (10, 21, True),  # max(20, 18) = 20
])
def test_hallucination_rule(ref_words, hyp_words, hallucination):
    s = _scores(" ".join(["w"] * ref_words), " ".join(["h"] * hyp_words))
    assert s["hallucination"] is hallucination
    assert s["empty_hypothesis"] is False


def test_empty_hypothesis_flag():
    assert _scores("some words", "  ")["empty_hypothesis"] is True
    assert _scores("some words", None)["empty_hypothesis"] is True  # a missing hypothesis is an empty one
    assert _scores("", "")["empty_hypothesis"] is False  # nothing said, nothing recognised: correct


CORPUS = [
    # med: "take metformin twice daily", all 4 words right, entity recovered: H4, occ 1 hit 1, ent words 1, errors 0
    {"utterance_id": "m1", "domain": "med", "reference": "Take Metformin twice daily.",
     "hypothesis": "take metformin twice daily", "entities": ["Metformin"]},
    # med: ozempic -> "o zempic": S1 + I1 (the insertion touches ozempic), H3; occ 1 hit 0, ent words 1, errors 2
    {"utterance_id": "m2", "domain": "med", "reference": "Start Ozempic at bedtime",
     "hypothesis": "start o zempic at bedtime", "entities": ["Ozempic"]},
    # bank: all 6 right: H6; occ 1 hit 1, ent words 2 (visa gold), errors 0
    {"utterance_id": "b1", "domain": "bank", "reference": "Your Visa Gold card is ready",
     "hypothesis": "your visa gold card is ready", "entities": ["Visa Gold"]},
    # bank: nothing recognised: D3, an empty hypothesis; no entities
    {"utterance_id": "b2", "domain": "bank", "reference": "Transfer to savings", "hypothesis": "",
     "entities": None},
]

# med:  2 utts, ref 4+4=8, hyp 4+5=9, H7 S1 D0 I1, WER 2/8; occ 2 hits 1 -> 1/2; ent words 2, errors 2 -> EER 1
# bank: 2 utts, ref 6+3=9, hyp 6, H6 S0 D3 I0, WER 3/9; occ 1 hits 1 -> 1; ent words 2, errors 0 -> EER 0;
#       1 empty hypothesis of 2 utterances
# all:  4 utts, ref 17, hyp 15, H13 S1 D3 I1, WER 5/17; occ 3 hits 2 -> 2/3; ent words 4 errors 2 -> 1/2;
#       1 empty hypothesis of 4
EXPECTED = {
    "all": [4, 17, 15, 5 / 17, 13, 1, 3, 1, 3, 2, 2 / 3, 0, 4, 2, 0.5, 0, 0.0, 1, 0.25],
    "bank": [2, 9, 6, 3 / 9, 6, 0, 3, 0, 1, 1, 1.0, 0, 2, 0, 0.0, 0, 0.0, 1, 0.5],
    "med": [2, 8, 9, 0.25, 7, 1, 0, 1, 2, 1, 0.5, 0, 2, 2, 1.0, 0, 0.0, 0, 0.0],
}


def test_score_hypotheses_overall_and_per_domain():
    records = score_hypotheses(CORPUS)
    assert records == [MetricRecord(domain, metric, float(value))
                       for domain in ("all", "bank", "med") for metric, value in zip(METRICS, EXPECTED[domain])]
    assert all(isinstance(r, tuple) and len(r) == 3 for r in records)  # (domain, metric, value), ready for a table


def test_score_hypotheses_takes_an_arrow_table():
    assert score_hypotheses(pa.Table.from_pylist(CORPUS)) == score_hypotheses(CORPUS)


def test_ratios_without_a_denominator_are_left_out():
    # one domain, no entities, no reference words: wer, entity_accuracy and eer have nothing to divide by
    records = score_hypotheses([{"utterance_id": "x", "domain": None, "reference": "", "hypothesis": "oh"}])
    by_metric = {(r.domain, r.metric): r.value for r in records}
    assert {d for d, _ in by_metric} == {"all", "unknown"}  # a missing domain is "unknown"
    assert not {"wer", "entity_accuracy", "eer"} & {m for _, m in by_metric}
    assert by_metric["all", "insertions"] == 1.0 and by_metric["all", "hallucination_rate"] == 0.0


def test_bad_rows_are_named():
    with pytest.raises(ValueError, match="'u1' is scored twice"):
        score_hypotheses([{"utterance_id": "u1", "reference": "a", "hypothesis": "a"}] * 2)
    with pytest.raises(ValueError, match="reserved"):
        score_hypotheses([{"utterance_id": "u1", "domain": "all", "reference": "a", "hypothesis": "a"}])
    with pytest.raises(ValueError, match="row 0 \\('u1'\\)"):
        score_hypotheses([{"utterance_id": "u1", "reference": None, "hypothesis": "a"}])
