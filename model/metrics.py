"""Evaluation metrics of ASR hypotheses against reference transcripts (issue #7): WER, entity accuracy,
entity error rate, insertions and hallucinations, overall and per domain.

Entry points:
- `normalize_for_wer(text)`: the one text normaliser every metric here applies to both sides.
- `word_error_rate(references, hypotheses)` -> `WordErrorRate`: corpus-level WER with its counts.
- `utterance_scores(rows)` -> pa.Table: one row of counts per utterance (what every metric is summed from).
- `score_hypotheses(rows)` -> list[MetricRecord]: (domain | "all", metric, value) records, ready for a
  table (`ModelRegistry.record_eval` stores them as they are).

`rows` are mappings (or a pyarrow Table) with `utterance_id`, `reference`, `hypothesis`, and optionally
`domain` (missing/None -> "unknown") and `entities` (the entity surface strings of the reference, a list;
an entity spoken twice is listed twice, as `utterances.entities` holds them).

Definitions (all on normalised text, counted per utterance and summed; ratios are of sums, not means of
per-utterance ratios, so long utterances weigh more, as in corpus WER):

- WER = (S + D + I) / reference words, from jiwer 4.0's Levenshtein alignment. jiwer has no defined WER
  for an empty reference, so an utterance whose reference normalises to nothing is not aligned: every
  hypothesis word counts as an insertion. A group with no reference words at all gets no `wer` record.
- entity accuracy = entity hits / entity occurrences. The occurrences of an utterance are its `entities`
  list, grouped by normalised form (entities that normalise to nothing are ignored). An entity listed k
  times with m non-overlapping whole-word occurrences in the normalised hypothesis (scanned left to
  right) has min(k, m) hits. Case, punctuation and hyphenation never cost a hit; a misspelling does.
- entity error rate (EER, as in CoT-ASR): word errors of the hypothesis on reference words inside entity
  mentions / reference entity words. A mention of an entity listed k times is located as the first k
  non-overlapping whole-word occurrences of its normalised form in the normalised reference; the entity
  words of an utterance are the union of its located mentions (a word in two overlapping mentions counts
  once). On jiwer's alignment, an entity error is: a substituted or deleted entity word (one error per
  word), and every inserted word whose insertion point touches an entity word, i.e. the reference word
  just before or just after the insertion is an entity word (this covers insertions inside a mention and
  at either edge of one: "metformin daily" for "metformin" costs the entity one insertion). Occurrences
  listed in `entities` but not found in the reference count for entity accuracy and are reported as
  `entity_occurrences_unlocated` (a data problem: entities should be substrings of their transcript).
- hallucination: an utterance whose hypothesis has more than max(2 * R, R + 8) words, R = reference words.
  Twice the reference cannot come from tokenisation (numbers spoken out, split compounds); the floor of 8
  extra words keeps a three-word reference from being flagged for a few words of noise, and flags any
  hypothesis of 9+ words on a reference with none (text "heard" in silence). This is the runaway
  generation of a speech-LLM (loops, continuing past the audio), distinct from ordinary insertions.
- empty hypothesis: an utterance with reference words whose hypothesis normalises to nothing.

A ratio whose denominator is zero in a group (no entities in a domain, say) is left out of the records
rather than reported as 0 or NaN; the counts it would be made of are always reported.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jiwer
import numpy as np
import pyarrow as pa

ALL_DOMAINS = "all"
UNKNOWN_DOMAIN = "unknown"

# Apostrophe look-alikes that NFKC leaves alone (it already maps the fullwidth one): typographic quotes,
# the modifier letter apostrophe, prime, backtick and acute accent as typed for an apostrophe.
_APOSTROPHES = frozenset("'\u2018\u2019\u201b\u2032\u02bc\u02b9`\u00b4")


class _WordCharacters(dict):
    """str.translate table, filled per code point on first sight: letters, digits and combining marks
    stay; apostrophe look-alikes become "'"; format characters (zero-width joiners, BOM) go; everything
    else (punctuation, symbols, whitespace, hyphens, dashes, slashes) becomes a space."""

    def __missing__(self, codepoint: int) -> str:
        char = chr(codepoint)
        if char in _APOSTROPHES:
            value = "'"
        else:
            category = unicodedata.category(char)
            # marks must stay: they are part of words in Indic and other scripts (Whisper's basic
            # normaliser turns them into spaces and splits those words apart)
            value = char if category[0] in "LNM" else "" if category == "Cf" else " "
        self[codepoint] = value
        return value


_TRANSLATION = _WordCharacters()
# after translation only word characters, spaces and "'" remain: an apostrophe with a space, another
# apostrophe or an end of text on either side is a quote mark, not part of a word
_LOOSE_APOSTROPHE = re.compile(r"(?<![^ '])'|'(?![^ '])")


def normalize_for_wer(text: str) -> str:
    """The ASR scoring normaliser: Unicode NFKC, lowercase, typographic apostrophes -> "'", then every
    character that is not a letter, digit or combining mark is a word separator (hyphens, dashes,
    slashes and all other punctuation and symbols: "follow-up" -> "follow up", "and/or" -> "and or",
    "U.S." -> "u s", "3.5" -> "3 5"), except an apostrophe between two word characters ("don't",
    "patient's" keep theirs; "'quoted'" and "patients'" lose them); whitespace collapsed to single spaces,
    none at the ends. Numbers are NOT converted to words, nor words to numbers: the corpus transcripts
    are in spoken form ("two hundred fifty dollars"), and a model trained on them should answer in kind;
    "$250" against "two hundred fifty dollars" is scored as the error it is.

    >>> normalize_for_wer("Dr. O’Brien’s follow-up: 'Metformin', 500mg/day!")
    "dr o'brien's follow up metformin 500mg day"
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_TRANSLATION)
    return " ".join(_LOOSE_APOSTROPHE.sub(" ", text).split())


@dataclass(frozen=True)
class WordErrorRate:
    """Corpus-level word error counts. `wer` is None when there are no reference words."""

    wer: float | None
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


class MetricRecord(NamedTuple):
    domain: str  # a domain, or "all"
    metric: str
    value: float


# counts per utterance; every metric is a sum of these or a ratio of two sums
_COUNT_COLUMNS = ("ref_words", "hyp_words", "hits", "substitutions", "deletions", "insertions",
                  "entity_occurrences", "entity_hits", "entity_occurrences_unlocated", "entity_words",
                  "entity_errors", "hallucination", "empty_hypothesis")

# (record name, numerator, denominator) after the summed counts; in this order in the records
_RATIOS = {
    "wer": (("substitutions", "deletions", "insertions"), "ref_words"),
    "entity_accuracy": (("entity_hits",), "entity_occurrences"),
    "eer": (("entity_errors",), "entity_words"),
    "hallucination_rate": (("hallucinations",), "utterances"),
    "empty_hypothesis_rate": (("empty_hypotheses",), "utterances"),
}

# the order of records within a domain
METRICS = ("utterances", "ref_words", "hyp_words", "wer", "hits", "substitutions", "deletions", "insertions",
           "entity_occurrences", "entity_hits", "entity_accuracy", "entity_occurrences_unlocated",
           "entity_words", "entity_errors", "eer", "hallucinations", "hallucination_rate", "empty_hypotheses",
           "empty_hypothesis_rate")


def _is_hallucination(ref_words: int, hyp_words: int) -> bool:
    return hyp_words > max(2 * ref_words, ref_words + 8)


def _alignments(references: Sequence[str], hypotheses: Sequence[str]) -> list[list[jiwer.AlignmentChunk] | None]:
    """jiwer's alignment chunks per utterance of normalised texts; None where the reference is empty."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: they are scored in pairs")
    scored = [i for i, ref in enumerate(references) if ref]
    result: list[list[jiwer.AlignmentChunk] | None] = [None] * len(references)
    if scored:  # one call for the corpus: jiwer maps words to ints once
        output = jiwer.process_words([references[i] for i in scored], [hypotheses[i] for i in scored])
        for i, chunks in zip(scored, output.alignments):
            result[i] = chunks
    return result


def _edit_counts(chunks: list[jiwer.AlignmentChunk] | None, hyp_words: int) -> tuple[int, int, int, int]:
    """(hits, substitutions, deletions, insertions) of one utterance."""
    if chunks is None:
        return 0, 0, 0, hyp_words
    counts = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
    for chunk in chunks:
        counts[chunk.type] += max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)
    return counts["equal"], counts["substitute"], counts["delete"], counts["insert"]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> WordErrorRate:
    """Corpus WER of hypotheses against references, paired by position, both `normalize_for_wer`-ed.
    An empty (after normalisation) reference contributes its hypothesis words as insertions."""
    refs = [normalize_for_wer(r) for r in references]
    hyps = [normalize_for_wer(h) for h in hypotheses]
    totals = np.zeros(4, dtype=np.int64)
    for chunks, hyp in zip(_alignments(refs, hyps), hyps):
        totals += _edit_counts(chunks, len(hyp.split()))
    hits, subs, dels, ins = (int(v) for v in totals)
    ref_words = hits + subs + dels
    return WordErrorRate(wer=(subs + dels + ins) / ref_words if ref_words else None, substitutions=subs,
                         deletions=dels, insertions=ins, hits=hits, ref_words=ref_words)


def _occurrences(tokens: list[str], pattern: tuple[str, ...]) -> list[int]:
    """Start indices of the non-overlapping whole-word occurrences of `pattern` in `tokens`, left to right."""
    starts, n, i = [], len(pattern), 0
    while i + n <= len(tokens):
        if tuple(tokens[i:i + n]) == pattern:
            starts.append(i)
            i += n
        else:
            i += 1
    return starts


def _entity_counts(ref: list[str], hyp: list[str], entities: Iterable[str],
                   chunks: list[jiwer.AlignmentChunk] | None) -> tuple[int, int, int, int, int]:
    """(occurrences, hits, unlocated occurrences, entity words, entity errors) of one utterance."""
    listed = Counter(tuple(normalize_for_wer(e).split()) for e in entities)
    listed.pop((), None)
    occurrences = hits = unlocated = 0
    in_entity = np.zeros(len(ref), dtype=bool)
    for entity, k in listed.items():
        occurrences += k
        hits += min(k, len(_occurrences(hyp, entity)))
        located = _occurrences(ref, entity)[:k]
        unlocated += k - len(located)
        for start in located:
            in_entity[start:start + len(entity)] = True
    errors = 0
    for chunk in chunks or ():
        if chunk.type in ("substitute", "delete"):
            errors += int(in_entity[chunk.ref_start_idx:chunk.ref_end_idx].sum())
        elif chunk.type == "insert":
            at = chunk.ref_start_idx  # inserted between reference words at-1 and at
            if (at > 0 and in_entity[at - 1]) or (at < len(ref) and in_entity[at]):
                errors += chunk.hyp_end_idx - chunk.hyp_start_idx
    return occurrences, hits, unlocated, int(in_entity.sum()), errors


def _rows(rows: Iterable[Mapping] | pa.Table) -> list[Mapping]:
    return rows.to_pylist() if isinstance(rows, pa.Table) else list(rows)


def utterance_scores(rows: Iterable[Mapping] | pa.Table) -> pa.Table:
    """One row per utterance, in input order: utterance_id, domain and the counts every metric is summed
    from (see the module docstring): ref_words, hyp_words, hits, substitutions, deletions, insertions,
    entity_occurrences, entity_hits, entity_occurrences_unlocated, entity_words, entity_errors,
    hallucination, empty_hypothesis."""
    rows = _rows(rows)
    ids, domains, refs, hyps, entities = [], [], [], [], []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        utterance_id = row.get("utterance_id")
        if utterance_id is None or not isinstance(row.get("reference"), str):
            raise ValueError(f"row {index} ({utterance_id!r}): needs an utterance_id and a reference string")
        if utterance_id in seen:
            raise ValueError(f"utterance {utterance_id!r} is scored twice: one hypothesis per utterance")
        seen.add(utterance_id)
        domain = row.get("domain") or UNKNOWN_DOMAIN
        if domain == ALL_DOMAINS:
            raise ValueError(f"utterance {utterance_id!r}: domain {ALL_DOMAINS!r} is reserved for the overall figures")
        ids.append(str(utterance_id))
        domains.append(str(domain))
        refs.append(normalize_for_wer(row["reference"]))
        hyps.append(normalize_for_wer(row.get("hypothesis") or ""))
        entities.append(row.get("entities") or ())

    counts = np.zeros((len(rows), len(_COUNT_COLUMNS)), dtype=np.int64)
    for i, (chunks, ref, hyp) in enumerate(zip(_alignments(refs, hyps), refs, hyps)):
        ref_tokens, hyp_tokens = ref.split(), hyp.split()
        counts[i] = (len(ref_tokens), len(hyp_tokens), *_edit_counts(chunks, len(hyp_tokens)),
                     *_entity_counts(ref_tokens, hyp_tokens, entities[i], chunks),
                     _is_hallucination(len(ref_tokens), len(hyp_tokens)), not hyp_tokens and bool(ref_tokens))
    columns = {"utterance_id": pa.array(ids, pa.string()), "domain": pa.array(domains, pa.string())}
    for j, name in enumerate(_COUNT_COLUMNS):
        flag = name in ("hallucination", "empty_hypothesis")
        columns[name] = pa.array(counts[:, j].astype(bool) if flag else counts[:, j])
    return pa.table(columns)


def score_hypotheses(rows: Iterable[Mapping] | pa.Table) -> list[MetricRecord]:
    """Every metric overall ("all") and per domain, as (domain, metric, value) records: "all" first, then
    the domains in sorted order, each in the order of METRICS (ratios with a zero denominator left out).
    Counts are exact integers held in floats."""
    scores = utterance_scores(rows)
    domains, group = np.unique(np.asarray(scores["domain"].to_pylist(), dtype=object), return_inverse=True)
    sums: dict[str, np.ndarray] = {}
    for name in _COUNT_COLUMNS:
        values = scores[name].to_numpy(zero_copy_only=False).astype(np.int64)
        per_domain = np.bincount(group, weights=values, minlength=len(domains)).astype(np.int64)
        sums[{"hallucination": "hallucinations", "empty_hypothesis": "empty_hypotheses"}.get(name, name)] = \
            np.concatenate([[values.sum()], per_domain])
    sums["utterances"] = np.concatenate([[scores.num_rows], np.bincount(group, minlength=len(domains))])

    records = []
    for g, domain in enumerate([ALL_DOMAINS, *(str(d) for d in domains)]):
        for metric in METRICS:
            if metric in _RATIOS:
                numerators, denominator = _RATIOS[metric]
                if sums[denominator][g] == 0:
                    continue
                value = sum(int(sums[n][g]) for n in numerators) / int(sums[denominator][g])
            else:
                value = float(sums[metric][g])
            records.append(MetricRecord(domain, metric, float(value)))
    return records


# The per-utterance counts of each ratio metric: what its bootstrap (jstip.model.significance) resamples.
RATIO_COUNTS = {name: (numerators, denominator) for name, (numerators, denominator) in _RATIOS.items()
                if denominator not in ("utterances",)}
_COUNT_ALIASES = {"hallucinations": "hallucination", "empty_hypotheses": "empty_hypothesis"}


def ratio_counts(scores: pa.Table, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per utterance of a ratio metric (wer, entity_accuracy, eer) from a table
    of `utterance_scores`."""
    if metric not in RATIO_COUNTS:
        raise ValueError(f"no per-utterance counts for metric {metric!r}; one of {sorted(RATIO_COUNTS)}")
    numerators, denominator = RATIO_COUNTS[metric]
    column = lambda name: scores[_COUNT_ALIASES.get(name, name)].to_numpy(zero_copy_only=False).astype(np.float64)  # noqa: E731
    return sum(column(n) for n in numerators), column(denominator)
