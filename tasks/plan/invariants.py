"""The invariants every plan must hold (`check_plan_invariants`), checked by plan_shard on its own output: a
violation is a planner bug, never a property of the input (PlanError)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.tasks.plan.draws import _string_buffers
from jstip.tasks.plan.words import _EPS, _MODALITIES, _ROLES, _lookup, _Words, group_words


def _np(table: pa.Table, column: str, fill=None) -> np.ndarray:
    col = table.column(column)
    if fill is not None:
        col = col.fill_null(fill)
    return col.to_numpy()


def check_plan_invariants(spans: pa.Table, word_alignments: pa.Table, audio: pa.Table) -> pa.Table:
    """Every violation of the plan invariants, one row each (utterance_id, plan_id, invariant, detail);
    an empty table when the plans are sound.

    Per (plan_id, utterance_id), spans in span_index order:
    - span_index: 0, 1, 2, ...; modality_role: role speech is modality speech, roles text and transcript are
      modality text;
    - coverage: the speech and text spans cover words 0..n-1 exactly once, in order (every format); a
      text-only sequence (strategy text) is one text span;
    - transcript: a transcript span repeats the words of the speech span just before it; in F1 every speech
      span has one; F2 has none (an ASR pair is F1);
    - audio: speech spans have audio bounds inside the audio (seconds and samples, start < end, samples
      within one sample of seconds x rate); other spans have none;
    - word_boundaries: a speech span starts at or before its first word and after the previous word's end,
      and ends at or after its last word and before the next word's start (with overlapping neighbours:
      anywhere in the overlap);
    - order: speech spans do not overlap and come in time order;
    - text: the span text is as long as its words joined by single spaces;
    - word_alignments: an utterance's plan has word alignments (text-only sequences excepted).
    """
    return _violations(spans, group_words(word_alignments), audio)


_VIOLATIONS = pa.schema([("utterance_id", pa.string()), ("plan_id", pa.string()), ("invariant", pa.string()),
                         ("detail", pa.string())])


def _violations(spans: pa.Table, words: _Words, audio: pa.Table) -> pa.Table:
    schema = _VIOLATIONS
    if spans.num_rows == 0:
        return schema.empty_table()
    if "strategy" not in spans.column_names:
        spans = spans.append_column("strategy", pa.nulls(spans.num_rows, pa.string()))
    if "format" not in spans.column_names:
        spans = spans.append_column("format", pa.nulls(spans.num_rows, pa.string()))
    runs = _span_runs(spans)
    if runs is None:
        spans = spans.sort_by([("plan_id", "ascending"), ("utterance_id", "ascending"), ("span_index", "ascending")])
        runs = _span_runs(spans, sorted_=True)
    plan_ids, utt_ids, new_run, index = runs
    run_first = np.flatnonzero(new_run)

    S = spans.num_rows
    run_len = np.diff(np.append(run_first, S))
    run = np.repeat(np.arange(len(run_first)), run_len)  # each span's run (plan)
    pos = np.arange(S) - run_first[run]
    modality, role = spans.column("modality"), spans.column("role")
    # integer codes, one hash pass per column: modality 0 speech / 1 text, role 0 speech / 1 text / 2 transcript
    modality_code = pc.index_in(modality, value_set=_MODALITIES).fill_null(-1).to_numpy()
    role_code = pc.index_in(role, value_set=_ROLES).fill_null(-1).to_numpy()
    r_speech, r_text, r_transcript = role_code == 0, role_code == 1, role_code == 2
    text_only = pc.fill_null(pc.equal(spans.column("strategy"), "text"), False).to_numpy(zero_copy_only=False)
    format_code = pc.index_in(spans.column("format"), value_set=pa.array(["F1", "F2"])).fill_null(-1).to_numpy()
    first, last = _np(spans, "first_word").astype(np.int64), _np(spans, "last_word").astype(np.int64)
    num_words = _np(spans, "num_words").astype(np.int64)

    # per run (plan), then spread over its spans
    run_utt = utt_ids.take(pa.array(run_first))
    w_run = pc.index_in(run_utt, value_set=words.ids).fill_null(-1).to_numpy() if len(words.n) else \
        np.full(len(run_first), -1)
    n_run = np.where(w_run >= 0, words.n[np.maximum(w_run, 0)] if len(words.n) else 0, -1)
    base_run = np.where(w_run >= 0, words.first_row[np.maximum(w_run, 0)] if len(words.n) else 0, 0)
    n, base, has_words = np.repeat(n_run, run_len), np.repeat(base_run, run_len), np.repeat(w_run >= 0, run_len)

    problems: list[tuple[np.ndarray, str, object]] = []

    def flag(mask: np.ndarray, invariant: str, detail) -> None:
        if mask.any():
            problems.append((np.flatnonzero(mask), invariant, detail))

    def flag_at(where: np.ndarray, invariant: str, detail) -> None:
        if len(where):
            problems.append((where, invariant, detail))

    flag(index != pos, "span_index", lambda i: f"span {index[i]} at position {pos[i]}")
    flag((role_code < 0) | (modality_code != np.minimum(role_code, 1)), "modality_role",
         lambda i: f"span {index[i]}: modality {modality[i]} with role {role[i]}")
    flag_at(run_first[(w_run < 0) & ~text_only[run_first]], "word_alignments",
            lambda i: "no word alignments for this utterance")
    flag((first < 0) | (last < first) | (num_words != last - first + 1) | (has_words & (last >= n)), "word_range",
         lambda i: f"span {index[i]}: words {first[i]}..{last[i]}, num_words {num_words[i]}, utterance has {n[i]}")

    # coverage: speech and text spans, in order, tile 0..n-1
    t_idx = np.flatnonzero(~r_transcript)
    t_run = run[t_idx]
    opens_run = np.ones(len(t_idx), bool)
    opens_run[1:] = t_run[1:] != t_run[:-1]
    expected = np.where(opens_run, 0, np.append(-1, last[t_idx][:-1] + 1))
    bad = t_idx[first[t_idx] != expected]
    ends = t_idx[np.append(opens_run[1:], True)]
    covered = np.zeros(len(run_first), bool)
    covered[t_run] = True
    bad = np.unique(np.concatenate([bad, ends[has_words[ends] & (last[ends] != n[ends] - 1)], run_first[~covered]]))
    flag_at(bad[~text_only[bad]], "coverage", lambda i: f"span {index[i]} (words {first[i]}..{last[i]}) breaks the "
            f"tiling of words 0..{n[i] - 1}")
    text_runs = run_first[text_only[run_first]]
    flag_at(text_runs[(run_len[run[text_runs]] != 1) | ~r_text[text_runs]
                      | (first[text_runs] != 0)], "coverage", lambda i: "a text-only sequence must be one text span "
            "from word 0")

    # transcripts: right after a speech span with the same words; every F1 speech span has one; F2 none
    tr = np.flatnonzero(r_transcript)
    before = np.maximum(tr - 1, 0)
    good = (pos[tr] > 0) & r_speech[before] & (first[before] == first[tr]) & (last[before] == last[tr])
    flag_at(tr[~good], "transcript", lambda i: f"transcript span {index[i]} does not follow a speech span with its "
            "words")
    sp = np.flatnonzero(r_speech)
    after = np.minimum(sp + 1, S - 1)
    has_transcript = ((pos[sp] < run_len[run[sp]] - 1) & r_transcript[after]
                      & (first[after] == first[sp]) & (last[after] == last[sp]))
    run_has_transcript = np.zeros(len(run_first), bool)
    run_has_transcript[run[tr]] = True
    f1_like = (format_code[sp] == 0) | ((format_code[sp] < 0) & run_has_transcript[run[sp]])
    flag_at(sp[f1_like & ~has_transcript], "transcript", lambda i: f"F1 speech span {index[i]} has no transcript")
    flag_at(tr[format_code[tr] == 1], "transcript", lambda i: f"F2 plan has transcript span {index[i]}")

    # audio bounds: speech spans have them, inside the audio; other spans have none
    bounds = [spans.column(c) for c in ("audio_start", "audio_end", "start_sample", "end_sample")]
    valid = [c.is_valid().to_numpy(zero_copy_only=False) for c in bounds]
    flag(~r_speech & (valid[0] | valid[1] | valid[2] | valid[3]), "audio",
         lambda i: f"{role[i]} span {index[i]} has audio bounds")
    # from here on, arrays are over the speech spans `sp`
    t0, t1 = (c.fill_null(np.nan).to_numpy()[sp] for c in bounds[:2])
    x0, x1 = (c.fill_null(-1).to_numpy()[sp] for c in bounds[2:])
    a = _lookup(run_utt, audio)[run[sp]]
    has_audio = a >= 0
    a = np.maximum(a, 0)
    dur = np.where(has_audio, _np(audio, "duration")[a], np.nan) if audio.num_rows else np.full(len(sp), np.nan)
    rate = np.where(has_audio, _np(audio, "sampling_rate")[a], 0) if audio.num_rows else np.zeros(len(sp))
    total = np.where(has_audio, _np(audio, "num_samples")[a], -1) if audio.num_rows else np.full(len(sp), -1)
    with np.errstate(invalid="ignore"):
        inside = (valid[0][sp] & valid[1][sp] & valid[2][sp] & valid[3][sp] & has_audio & (t0 >= 0) & (t0 < t1)
                  & (t1 <= dur + _EPS) & (x0 >= 0) & (x0 < x1) & (x1 <= total) & (np.abs(x0 - t0 * rate) <= 1)
                  & (np.abs(x1 - t1 * rate) <= 1))
    if not inside.all():
        problems.append((sp[~inside], "audio", lambda i: (
            f"speech span {index[i]}: {bounds[0][i]}..{bounds[1][i]} s, samples {bounds[2][i]}..{bounds[3][i]}: "
            "missing, empty, outside the utterance's audio or not seconds x sampling rate")))

    # speech spans on word boundaries, in order, not overlapping
    f_sp, l_sp, n_sp = first[sp], last[sp], n[sp]
    W = words.num_rows
    if W:
        wf, wl = np.clip(base[sp] + f_sp, 0, W - 1), np.clip(base[sp] + l_sp, 0, W - 1)
        # word times clipped to the audio: checks let a word end a frame past it (CheckConfig.word_time_tolerance_s)
        with np.errstate(invalid="ignore"):
            s_first, e_last = np.minimum(words.start[wf], dur), np.minimum(words.end[wl], dur)
            e_before = np.minimum(words.end[np.maximum(wf - 1, 0)], dur)
            s_after = np.minimum(words.start[np.minimum(wl + 1, W - 1)], dur)
            # between two words: anywhere from the earlier word's end to the later one's start (or in their overlap)
            ok_start = np.where(f_sp == 0, t0 <= s_first + _EPS, (t0 >= np.minimum(e_before, s_first) - _EPS)
                                & (t0 <= np.maximum(e_before, s_first) + _EPS))
            ok_end = np.where(l_sp == n_sp - 1, t1 >= e_last - _EPS, (t1 >= np.minimum(e_last, s_after) - _EPS)
                              & (t1 <= np.maximum(e_last, s_after) + _EPS))
        checked = has_words[sp] & inside & (l_sp < n_sp) & (f_sp >= 0) & (l_sp >= f_sp)
        if (checked & ~(ok_start & ok_end)).any():
            problems.append((sp[checked & ~(ok_start & ok_end)], "word_boundaries", lambda i: (
                f"speech span {index[i]} ({bounds[0][i]}..{bounds[1][i]} s) cuts into a word of "
                f"{first[i]}..{last[i]}")))
        offsets, _ = _string_buffers(words.word)
        prefix = np.concatenate([[0], np.cumsum(np.diff(offsets))])
        wf_all, wl_all = np.clip(base + first, 0, W - 1), np.clip(base + last, 0, W - 1)
        expected_len = prefix[wl_all + 1] - prefix[wf_all] + (last - first)
        text_len = np.diff(_string_buffers(spans.column("text"))[0])
        flag(has_words & (first >= 0) & (last < n) & (last >= first) & (text_len != expected_len), "text",
             lambda i: f"span {index[i]}: text of {text_len[i]} bytes, its words joined take {expected_len[i]}")
    ok = np.flatnonzero(inside)
    same_run = run[sp[ok]][1:] == run[sp[ok]][:-1]
    overlap = sp[ok][1:][same_run & (t0[ok][1:] < t1[ok][:-1] - _EPS)]
    if len(overlap):
        problems.append((overlap, "order", lambda i: f"speech span {index[i]} starts at {bounds[0][i]} s, before "
                         "the previous speech span ends"))

    rows = {"utterance_id": [], "plan_id": [], "invariant": [], "detail": []}
    for where, invariant, detail in problems:
        for i in where.tolist():
            rows["utterance_id"].append(utt_ids[i].as_py())
            rows["plan_id"].append(plan_ids[i].as_py())
            rows["invariant"].append(invariant)
            rows["detail"].append(detail(i))
    return pa.table(rows, schema=schema)


def _span_runs(spans: pa.Table, sorted_: bool = False):
    """(plan ids, utterance ids, first-span-of-a-run flags, span_index), or None when the spans of one plan
    are not together in span_index order (then the caller sorts them)."""
    plan_ids, utt_ids = spans.column("plan_id").combine_chunks(), spans.column("utterance_id").combine_chunks()
    new_run = np.ones(spans.num_rows, bool)
    new_run[1:] = (pc.not_equal(plan_ids[1:], plan_ids[:-1]).to_numpy(zero_copy_only=False)
                   | pc.not_equal(utt_ids[1:], utt_ids[:-1]).to_numpy(zero_copy_only=False))
    index = _np(spans, "span_index").astype(np.int64)
    if not sorted_:
        if not np.all(np.diff(index)[~new_run[1:]] > 0):
            return None
        first = pa.array(np.flatnonzero(new_run))
        run_plans, run_utts = plan_ids.take(first), utt_ids.take(first)
        # runs in (plan, utterance) order are distinct; otherwise count the distinct ones
        later = pc.or_(pc.greater(run_plans[1:], run_plans[:-1]),
                       pc.and_(pc.equal(run_plans[1:], run_plans[:-1]), pc.greater(run_utts[1:], run_utts[:-1])))
        if not pc.all(later).as_py():  # (true for no pairs)
            run_keys = pc.binary_join_element_wise(run_plans, run_utts, "\x00")
            if len(pc.unique(run_keys)) != len(run_keys):
                return None
    return plan_ids, utt_ids, new_run, index
