"""The aligner as a tool: `jstip align` word-aligns a manifest, `jstip eval-alignment` scores alignments."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from jstip.cli.common import app, console, fail, one_line_errors, print_relation
from jstip.tasks.aligners import ALIGNERS  # the registry only; no backend is imported

# Word-alignment backends, as the registry names them: a new backend is a new choice of --aligner.
AlignerName = Enum("AlignerName", {name: name for name in ALIGNERS}, type=str)


class AlignmentFormat(str, Enum):
    """What `jstip align` writes (jstip.tasks.aligners.align_manifest.OUTPUT_FORMATS)."""

    jsonl = "jsonl"
    ctm = "ctm"
    textgrid = "textgrid"


@app.command()
def align(
    manifest: Annotated[Path, typer.Argument(help="NeMo-style JSONL manifest (audio_filepath, text, optional id, "
                                                  "duration, offset).")],
    out: Annotated[Path, typer.Option(help="Output: a .jsonl / .ctm file, or a directory for textgrid.")],
    aligner: Annotated[AlignerName, typer.Option(help="Word-alignment backend.")] = AlignerName["pocketsphinx"],
    model: Annotated[Optional[str], typer.Option(help="whisperx: hub id or local Wav2Vec2ForCTC dir; "
                                                      "nemo: .nemo file or pretrained name.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    format: Annotated[AlignmentFormat, typer.Option("--format", help="Output format (a JSONL status file is "
                                                                     "written beside ctm and textgrid).")
                      ] = AlignmentFormat.jsonl,
    config: Annotated[Optional[Path], typer.Option(help="YAML build config whose ingest/normalize/align/checks "
                                                        "sections to use (--aligner/--model override it).")] = None,
    allow_root: Annotated[Optional[list[Path]], typer.Option(
        "--allow-root", help="A directory audio may come from besides the manifest's own (repeatable; added to "
                             "ingest.allowed_roots; / allows every path).")] = None,
):
    """Word-align a manifest: one output line per input line, in order, status ok or failed with a reason."""
    from pydantic import ValidationError

    from jstip.config import ConfigError, load_config
    from jstip.tasks.aligners.align_manifest import align_manifest
    from jstip.tasks.ingest import AudioOutsideAllowedRoots, ManifestError

    with one_line_errors(ConfigError, ManifestError, ValidationError, OSError):
        build_config = load_config(config)
        for root in allow_root or []:
            if not root.is_dir():
                raise ManifestError(f"--allow-root {root}: not a directory")
        build_config = build_config.model_validate({
            **build_config.model_dump(),
            "align": {**build_config.align.model_dump(), "aligner": aligner.value,
                      "model": model or build_config.align.model},
            "ingest": {"allowed_roots": [*build_config.ingest.allowed_roots,
                                         *(str(r.resolve()) for r in allow_root or [])]}})
        try:
            summary = align_manifest(manifest, build_config, out, format.value, workers)
        except AudioOutsideAllowedRoots as e:  # a usage error: the flag is missing
            fail(str(e), code=2)
    console.print(f"{summary.entries} entries: {summary.aligned} aligned, {summary.failed} failed "
                  f"({summary.audio_seconds:.1f} s of audio)")
    console.print(f"wrote {summary.out}" + (f" and {summary.status_file}" if summary.status_file != summary.out else ""))


@app.command("eval-alignment")
def eval_alignment(
    reference: Annotated[Path, typer.Option(help="Reference alignment: jstip JSONL, CTM, TextGrid or TIMIT .wrd "
                                                 "(a file, or a directory of them).")],
    hypothesis: Annotated[Path, typer.Option(help="Hypothesis alignment, in any of the same formats.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
):
    """Word-boundary accuracy: start/end error (ms), share within 20/50/100 ms, share of words aligned."""
    from jstip.tasks.aligners.alignment_io import AlignmentFormatError, read_alignments
    from jstip.tasks.aligners.eval_alignment import evaluate_alignments

    with one_line_errors(AlignmentFormatError):
        errors = evaluate_alignments(read_alignments(reference), read_alignments(hypothesis))
    if as_json:
        print(json.dumps(errors.as_dict(), indent=2))
        return
    print_relation(["metric", "value"], [(k, f"{v:.2f}" if isinstance(v, float) else v)
                                         for k, v in errors.as_dict().items()], title="alignment accuracy")
