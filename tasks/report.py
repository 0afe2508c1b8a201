"""An HTML report of a published dataset version: plan statistics as tables and PNG plots.

`write_report(store, version=None)` writes `<store>/reports/<version>/index.html` and its PNGs:
- span lengths in words (speech and text spans, per strategy) and in seconds (speech spans): the
  analogue of JSTIP's segment-length figure;
- the share of speech words per plan; utterance durations; quarantine reasons; word alignment scores;
and the summary tables of the `stats_*` views (storage/views.py), with a link to the version's Great
Expectations Data Docs when the catalog records them (dataset_versions.data_docs_path).

Every number comes from SQL over the catalog (the statistics views, run in the version's own schema);
Python only draws. Plots use matplotlib's object API with the Agg canvas: no display, no global state.
"""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jstip.storage import DatasetStore, StoreError
from jstip.storage.views import PLAN_STATISTICS_VIEWS

SUMMARY_VIEWS = ("stats_speech_fraction", "stats_spans_per_utterance", "stats_span_lengths",
                 "stats_hours_per_domain", "stats_entity_placement")
_COLOURS = {"speech": "#1f77b4", "text": "#ff7f0e"}


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
    rel = con.execute(sql, params or [])
    return [d[0] for d in rel.description], rel.fetchall()


def _view(con: duckdb.DuckDBPyConnection, name: str) -> tuple[list[str], list[tuple]]:
    # the view's SQL rather than the view, so versions registered before the view existed work too
    return _rows(con, f"SELECT * FROM ({PLAN_STATISTICS_VIEWS[name]})")


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path.name


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _span_length_plot(con, out: Path, unit: str) -> str:
    _, rows = _rows(con, f"""
        SELECT strategy, modality, bin, sum(spans) FROM ({PLAN_STATISTICS_VIEWS['stats_span_length_histogram']})
        WHERE unit = ? AND role <> 'transcript' GROUP BY ALL ORDER BY ALL""", [unit])
    strategies = sorted({r[0] or "(none)" for r in rows})
    fig = Figure(figsize=(4.2 * max(1, len(strategies)), 3.4))
    axes = fig.subplots(1, max(1, len(strategies)), squeeze=False)[0]
    if not rows:
        _empty(axes[0], "spans")
    width = 1.0 if unit == "words" else 0.25
    for ax, strategy in zip(axes, strategies):
        for modality in ("speech", "text") if unit == "words" else ("speech",):
            pts = [(b, n) for s, m, b, n in rows if (s or "(none)") == strategy and m == modality]
            if pts:
                bins, counts = np.array(pts, dtype=float).T
                ax.bar(bins + (width / 2 if unit == "seconds" else 0), counts, width=width * 0.9, alpha=0.6,
                       color=_COLOURS[modality], label=f"{modality} ({int(counts.sum())})")
        ax.set_title(f"{strategy}")
        ax.set_xlim(left=0)
        ax.set_xlabel("span length, words" if unit == "words" else "speech span length, s")
        ax.set_ylabel("spans")
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(f"span lengths ({unit}) by strategy")
    return _save(fig, out / f"span_lengths_{unit}.png")


def _speech_fraction_plot(con, out: Path) -> str:
    _, rows = _view(con, "stats_speech_fraction_histogram")
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    strategies = sorted({r[0] or "(none)" for r in rows})
    if not rows:
        _empty(ax, "plans")
    for k, strategy in enumerate(strategies):
        pts = np.array([(b, n) for s, b, n in rows if (s or "(none)") == strategy], dtype=float)
        step = 0.1 / max(1, len(strategies))
        ax.bar(pts[:, 0] + step * (k + 0.5), pts[:, 1], width=step * 0.9, label=strategy)
    ax.set_xlabel("share of the plan's words given as speech (bins of 0.1)")
    ax.set_ylabel("plans")
    if rows:
        ax.legend(fontsize=8)
    ax.set_title("speech fraction per plan")
    return _save(fig, out / "speech_fraction.png")


def _duration_plot(con, out: Path) -> str:
    _, rows = _rows(con, "SELECT floor(duration * 2) / 2 AS bin, count(*) FROM normalized_audio GROUP BY 1 ORDER BY 1")
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    if rows:
        bins, counts = np.array(rows, dtype=float).T
        ax.bar(bins + 0.25, counts, width=0.45)
        ax.set_xlim(left=0)
        ax.set_xlabel("utterance duration, s (bins of 0.5 s)")
        ax.set_ylabel("utterances")
    else:
        _empty(ax, "utterances")
    ax.set_title("accepted utterance durations")
    return _save(fig, out / "utterance_durations.png")


def _quarantine_plot(con, out: Path) -> str:
    _, rows = _rows(con, "SELECT stage || ' / ' || check_name, count(*) AS n FROM quarantine GROUP BY 1 "
                         "ORDER BY n, 1")
    fig = Figure(figsize=(6, 1.2 + 0.3 * max(1, len(rows))))
    ax = fig.subplots()
    if rows:
        ax.barh([r[0] for r in rows], [r[1] for r in rows], color="#d62728")
        ax.set_xlabel("quarantined items")
    else:
        _empty(ax, "quarantined items")
    ax.set_title("quarantine reasons (stage / check)")
    return _save(fig, out / "quarantine_reasons.png")


def _score_plot(con, out: Path) -> str:
    # scores are not comparable across aligners: one histogram per aligner, 40 bins over its own range
    _, rows = _rows(con, """
        WITH r AS (SELECT aligner, min(score) AS lo, max(score) AS hi FROM word_alignments
                   WHERE isfinite(score) GROUP BY aligner)
        SELECT aligner, lo, hi, least(floor((score - lo) / nullif(hi - lo, 0) * 40), 39) AS bin, count(*)
        FROM word_alignments JOIN r USING (aligner) WHERE isfinite(score) GROUP BY ALL ORDER BY ALL""")
    aligners = sorted({r[0] for r in rows})
    fig = Figure(figsize=(5 * max(1, len(aligners)), 3.4))
    axes = fig.subplots(1, max(1, len(aligners)), squeeze=False)[0]
    if not rows:
        _empty(axes[0], "word scores")
    for ax, aligner in zip(axes, aligners):
        pts = [(lo, hi, b or 0.0, n) for a, lo, hi, b, n in rows if a == aligner]
        lo, hi = pts[0][0], pts[0][1]
        width = (hi - lo) / 40 if hi > lo else 1.0
        ax.bar([lo + (b + 0.5) * width for _, _, b, _ in pts], [n for *_, n in pts], width=width * 0.9)
        ax.set_title(aligner)
        ax.set_xlabel("word score (aligner-specific; higher is better)")
        ax.set_ylabel("words")
    fig.suptitle("word alignment scores")
    return _save(fig, out / "alignment_scores.png")


def _table(columns: list[str], rows: list[tuple]) -> str:
    def cell(v) -> str:
        if v is None:
            return ""
        return html.escape(f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_docs(version, out: Path) -> str | None:
    """Relative link to the version's Data Docs, when the catalog records them (resolved against this
    store's root: a moved or copied store links to its own)."""
    return None if version.data_docs_path is None else os.path.relpath(version.data_docs_path, out)


def _config_yaml(config: dict) -> str:
    """The build config as YAML in the order configs/*.yaml use (the config model's field order), not one
    minified line; a config older than the current model keeps its recorded (sorted) order."""
    from pydantic import ValidationError

    from jstip.config import BuildConfig

    try:
        ordered = BuildConfig.model_validate(config).model_dump(mode="json")
        ordered = {key: ordered[key] for key in ordered if key in config}  # what the version recorded, no more
    except ValidationError:
        ordered = config
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_report(store: str | Path, version: str | None = None) -> Path:
    """Write the report of `version` (id, unique prefix or dataset name; None: the newest training version) and
    return its index.html."""
    data_store = DatasetStore(store)
    v = data_store.version(version)
    out = data_store.root / "reports" / v.version_id
    out.mkdir(parents=True, exist_ok=True)
    with data_store.connect(read_only=True) as con:
        docs = _data_docs(v, out)
        con.execute(f'USE "v_{v.version_id}"')
        plots = [
            ("Span lengths in words", _span_length_plot(con, out, "words"),
             "Speech and text spans (transcripts repeat speech spans and are left out), per strategy."),
            ("Speech span lengths in seconds", _span_length_plot(con, out, "seconds"),
             "Audio cut for each speech span, edges in the middle of the gaps between words; bins of 0.25 s."),
            ("Speech fraction", _speech_fraction_plot(con, out), "Share of each plan's words given as speech."),
            ("Utterance durations", _duration_plot(con, out), "Normalised audio of the accepted utterances."),
            ("Quarantine reasons", _quarantine_plot(con, out), "Every quarantined item, by stage and check."),
            ("Alignment scores", _score_plot(con, out), "Word scores of the accepted utterances, per aligner."),
        ]
        tables = [(name, *_view(con, name)) for name in SUMMARY_VIEWS]
    config = html.escape(_config_yaml(v.config))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>jstip report {html.escape(v.name)}/{v.version_id}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3}</style></head><body>",
        f"<h1>{html.escape(v.name)} / <code>{v.version_id}</code></h1>",
        f"<p>published {v.created_at:%Y-%m-%d %H:%M:%S %Z}, parent {html.escape(v.parent_version or 'none')}, "
        f"code {html.escape(v.code_version)}; report written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC. Rows: "
        + ", ".join(f"{html.escape(t)} {n:,}" for t, n in sorted(v.row_counts.items())) + ".</p>",
        (f"<p><a href='{html.escape(docs)}'>Great Expectations Data Docs</a> of this version.</p>" if docs
         else "<p>No Great Expectations Data Docs are recorded for this version.</p>"),
        "<p>Query the same numbers with <code>jstip stats " + v.version_id + "</code> or "
        f"<code>SELECT * FROM v_{v.version_id}.stats_span_lengths</code>.</p>",
    ]
    for title, png, caption in plots:
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p><img src='{png}' alt='{png}'>")
    parts.append("<h2>Statistics</h2>")
    for name, columns, rows in tables:
        parts.append(f"<h3><code>{name}</code></h3>" + _table(columns, rows))
    parts.append(f"<h2>Configuration</h2><p>The build config that made this version (part of its id), as YAML: "
                 f"save it as a file to rebuild with <code>--config</code>.</p><pre>{config}</pre></body></html>")
    index = out / "index.html"
    tmp = index.with_suffix(".tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(index)
    return index
