"""Derived catalog views: SQL over a version's tables, created beside them for every published version.

Each entry is `view name -> SELECT ...` using the table names unqualified (`spans`, `quarantine`, ...):
DuckDB resolves them in the view's own schema, so the same SQL serves the latest version (main schema)
and every `v_<version>` schema. Add statistics here, not in Python loops over rows.
"""

from __future__ import annotations

DERIVED_VIEWS: dict[str, str] = {}

# Quarantined items by reason (stage + check), with the audio they withhold. An utterance failing several
# checks counts once in each; `hours` sums the rows whose duration is known (`unknown_duration`: the others,
# e.g. unparsable manifest lines; every row of versions published before quarantine had a duration).
DERIVED_VIEWS["quarantine_summary"] = """
SELECT stage, check_name, count(*) AS count, coalesce(sum(duration), 0) / 3600 AS hours,
       count(*) - count(duration) AS unknown_duration, min(reason) AS example
FROM (SELECT * FROM quarantine UNION ALL BY NAME SELECT NULL::DOUBLE AS duration WHERE false)
GROUP BY stage, check_name ORDER BY count DESC, stage, check_name
"""

# -- interleave plan statistics (jstip stats, jstip report) ------------------------------------------
# Versions published before spans/interleave_plans gained their nullable columns read them as NULL
# (UNION ALL BY NAME with an empty row set that has them), so these views bind on every version.
_SPANS = """(SELECT * FROM spans UNION ALL BY NAME
    SELECT NULL::VARCHAR AS strategy, NULL::VARCHAR AS format, NULL::INTEGER AS entity_words WHERE false)"""
_PLANS = """(SELECT * FROM interleave_plans UNION ALL BY NAME
    SELECT NULL::VARCHAR AS domain, NULL::DOUBLE AS audio_seconds WHERE false)"""
_ALL = "CASE WHEN grouping(strategy) = 1 THEN '(all)' ELSE strategy END"  # the ROLLUP total row

PLAN_STATISTICS_VIEWS: dict[str, str] = {
    # span lengths by strategy, modality and role: words for every span, seconds for speech spans. Spans are
    # counted per length (words; seconds to 10 ms) and medians/p90 read off the counts (the smallest length
    # reached by half / 90% of the spans): no sort of ~10^8 spans at 38k hours.
    "stats_span_lengths": f"""
        WITH w AS (
            SELECT coalesce(strategy, '') AS strategy, modality, role, num_words, count(*) AS n
            FROM {_SPANS} GROUP BY ALL),
        s AS (
            SELECT coalesce(strategy, '') AS strategy, modality, role, round(audio_end - audio_start, 2) AS centis,
                   count(*) AS n, sum(audio_end - audio_start) AS seconds, max(audio_end - audio_start) AS longest
            FROM {_SPANS} WHERE audio_end IS NOT NULL GROUP BY ALL),
        wq AS (
            SELECT strategy, modality, role, sum(n * num_words) / sum(n) AS mean_words, max(num_words) AS max_words,
                   min(num_words) FILTER (WHERE cum >= 0.5 * total) AS median_words,
                   min(num_words) FILTER (WHERE cum >= 0.9 * total) AS p90_words, max(total) AS spans
            FROM (SELECT *, sum(n) OVER (PARTITION BY strategy, modality, role ORDER BY num_words) AS cum,
                            sum(n) OVER (PARTITION BY strategy, modality, role) AS total FROM w)
            GROUP BY ALL),
        sq AS (
            SELECT strategy, modality, role, sum(seconds) / sum(n) AS mean_seconds, max(longest) AS max_seconds,
                   min(centis) FILTER (WHERE cum >= 0.5 * total) AS median_seconds, sum(seconds) / 3600 AS hours
            FROM (SELECT *, sum(n) OVER (PARTITION BY strategy, modality, role ORDER BY centis) AS cum,
                            sum(n) OVER (PARTITION BY strategy, modality, role) AS total FROM s)
            GROUP BY ALL)
        SELECT nullif(strategy, '') AS strategy, modality, role, spans, round(mean_words, 2) AS mean_words,
               median_words, p90_words, max_words, round(mean_seconds, 3) AS mean_seconds, median_seconds,
               round(max_seconds, 3) AS max_seconds, round(hours, 3) AS speech_hours
        FROM wq LEFT JOIN sq USING (strategy, modality, role) ORDER BY ALL""",
    # unit 'words': bins of one word (bin 100 holds every span of 100 or more); unit 'seconds': speech
    # spans in bins of 0.25 s (bin 30 holds 30 s and more)
    "stats_span_length_histogram": f"""
        SELECT strategy, modality, role, 'words' AS unit, least(num_words, 100)::DOUBLE AS bin, count(*) AS spans
        FROM {_SPANS} GROUP BY ALL
        UNION ALL
        SELECT strategy, modality, role, 'seconds', least(floor((audio_end - audio_start) * 4) / 4, 30.0), count(*)
        FROM {_SPANS} WHERE modality = 'speech' GROUP BY ALL
        ORDER BY ALL""",
    # share of words and of audio time given as speech, per strategy and overall
    "stats_speech_fraction": f"""
        SELECT {_ALL} AS strategy, count(*) AS plans, sum(num_words) AS words,
               round(sum(speech_words) / sum(num_words), 4) AS speech_word_share,
               round(avg(speech_words / num_words), 4) AS mean_plan_share,
               round(sum(speech_seconds) / 3600, 3) AS speech_hours,
               round(sum(speech_seconds) / sum(audio_seconds), 4) AS speech_time_share
        FROM {_PLANS} GROUP BY ROLLUP (strategy) ORDER BY grouping(strategy), strategy""",
    # plans by their share of speech words, in bins of 0.1 (bin 1.0: all speech)
    "stats_speech_fraction_histogram": f"""
        SELECT strategy, floor(speech_words / num_words * 10) / 10 AS bin, count(*) AS plans
        FROM {_PLANS} GROUP BY ALL ORDER BY ALL""",
    "stats_spans_per_utterance": f"""
        SELECT {_ALL} AS strategy, count(*) AS plans, round(avg(num_spans), 2) AS mean_spans,
               quantile_disc(num_spans, 0.5) AS median_spans, quantile_disc(num_spans, 0.9) AS p90_spans,
               max(num_spans) AS max_spans
        FROM {_PLANS} GROUP BY ROLLUP (strategy) ORDER BY grouping(strategy), strategy""",
    "stats_spans_per_utterance_histogram": f"""
        SELECT strategy, num_spans, count(*) AS plans FROM {_PLANS} GROUP BY ALL ORDER BY ALL""",
    # hours of audio per domain; text-only sequences (strategy text) have no audio
    "stats_hours_per_domain": f"""
        SELECT coalesce(domain, '(none)') AS domain, count(*) FILTER (WHERE strategy <> 'text') AS utterances,
               round(coalesce(sum(audio_seconds), 0) / 3600, 3) AS hours,
               count(*) FILTER (WHERE strategy = 'text') AS text_sequences, sum(num_words) AS words
        FROM {_PLANS} GROUP BY ALL ORDER BY hours DESC, domain""",
    # where the words of entity mentions (utterances.entities) land: entity_speech_share against
    # word_speech_share (all words of the same spans) shows whether entities reach the model as speech
    # as often as other words; transcripts repeat speech spans and are left out
    "stats_entity_placement": f"""
        SELECT {_ALL} AS strategy, sum(entity_words) AS entity_words,
               coalesce(sum(entity_words) FILTER (WHERE modality = 'speech'), 0) AS in_speech,
               coalesce(sum(entity_words) FILTER (WHERE modality = 'text'), 0) AS in_text,
               round(coalesce(sum(entity_words) FILTER (WHERE modality = 'speech'), 0)
                     / nullif(sum(entity_words), 0), 4) AS entity_speech_share,
               round(coalesce(sum(num_words) FILTER (WHERE modality = 'speech'), 0) / sum(num_words), 4)
                   AS word_speech_share
        FROM {_SPANS} WHERE role <> 'transcript' AND entity_words IS NOT NULL
        GROUP BY ROLLUP (strategy) ORDER BY grouping(strategy), strategy""",
}
DERIVED_VIEWS.update(PLAN_STATISTICS_VIEWS)
