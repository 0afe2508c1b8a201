"""`jstip align` (the CLI contract) and `jstip eval-alignment`, with the alignment formats they speak."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jstip.cli import app
from jstip.tasks.aligners.alignment_io import AlignedWord, read_alignments, write_ctm, write_textgrid
from jstip.tasks.aligners.eval_alignment import evaluate_alignments
from jstip.synth import synthesize_corpus
from jstip.tasks.text import split_words

runner = CliRunner(env={"COLUMNS": "160"})


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("alignme")
    synth = synthesize_corpus(root / "synth", utterances=3, seed=5)
    good = [json.loads(line) for line in synth.nemo_manifest.read_text().splitlines()]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]),
             json.dumps({"audio_filepath": str(root / "gone.wav"), "text": "hello", "id": "gone"}),
             "", json.dumps(good[2])]
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, good, synth.word_timings


def test_align_writes_one_line_per_input_line_in_order(manifest, tmp_path):
    path, good, reference = manifest
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["align", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 entries: 3 aligned, 2 failed" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in rows] == [
        (good[0]["id"], "ok"), ("manifest:line2", "failed"), (good[1]["id"], "ok"), ("gone", "failed"),
        (good[2]["id"], "ok")]
    assert "malformed JSON" in rows[1]["reason"] and rows[1]["words"] == []
    assert rows[3]["audio_filepath"].endswith("gone.wav") and "audio file not found" in rows[3]["reason"]
    for row, g in zip([rows[0], rows[2], rows[4]], good):
        assert [w["word"] for w in row["words"]] == split_words(g["text"])
        assert row["audio_filepath"] == g["audio_filepath"] and row["reason"] is None
        assert all(0 <= w["start"] < w["end"] <= g["duration"] + 1e-3 for w in row["words"])

    # eval-alignment against the synthesiser's reference timings
    evaluated = runner.invoke(app, ["eval-alignment", "--reference", str(reference), "--hypothesis", str(out),
                                    "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output)
    assert figures["utterances"] == 3 and figures["words_aligned_pct"] == 100.0
    assert figures["mean_start_ms"] < 40 and figures["within_100ms_pct"] > 90


def test_ctm_and_textgrid_exports_match_the_jsonl(manifest, tmp_path):
    path, good, _ = manifest
    assert runner.invoke(app, ["align", str(path), "--out", str(tmp_path / "a.jsonl")]).exit_code == 0
    assert runner.invoke(app, ["align", str(path), "--out", str(tmp_path / "a.ctm"), "--format", "ctm"]).exit_code == 0
    assert runner.invoke(app, ["align", str(path), "--out", str(tmp_path / "tg"), "--format", "textgrid"]).exit_code == 0
    as_jsonl = {k: v for k, v in read_alignments(tmp_path / "a.jsonl").items() if v}
    as_ctm = read_alignments(tmp_path / "a.ctm")
    as_textgrid = read_alignments(tmp_path / "tg", fmt="textgrid")
    assert sorted(as_jsonl) == sorted(as_ctm) == sorted(g["id"] for g in good)
    for uid, words in as_jsonl.items():
        for other in (as_ctm[uid], as_textgrid[uid]):
            assert [w.word for w in other] == [w.word for w in words]
            assert [round(w.start, 3) for w in other] == [round(w.start, 3) for w in words]
    # the failures are not only a log line: the status file beside the export has them
    status = [json.loads(line) for line in (tmp_path / "a.ctm.status.jsonl").read_text().splitlines()]
    assert [s["status"] for s in status].count("failed") == 2


def test_parallel_workers_give_the_same_output(manifest, tmp_path):
    path, _, _ = manifest
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert runner.invoke(app, ["align", str(path), "--out", str(one)]).exit_code == 0
    assert runner.invoke(app, ["align", str(path), "--out", str(two), "--workers", "2"]).exit_code == 0
    assert one.read_text() == two.read_text()


def test_format_readers_exact(tmp_path):
    words = [AlignedWord("Take", 0.25, 0.5, 0.9), AlignedWord("metformin,", 0.6, 1.25, None)]
    write_ctm({"u1": words}, tmp_path / "x.ctm")
    assert (tmp_path / "x.ctm").read_text() == "u1 1 0.250 0.250 Take 0.9000\nu1 1 0.600 0.650 metformin,\n"
    write_textgrid(words, 2.0, tmp_path / "u2.TextGrid")
    assert read_alignments(tmp_path / "u2.TextGrid")["u2"] == [AlignedWord("Take", 0.25, 0.5),
                                                               AlignedWord("metformin,", 0.6, 1.25)]
    (tmp_path / "si1.wrd").write_text("3050 5723 she\n5723 10337 had\n")
    assert read_alignments(tmp_path / "si1.wrd") == {"si1": [AlignedWord("she", 3050 / 16000, 5723 / 16000),
                                                             AlignedWord("had", 5723 / 16000, 10337 / 16000)]}
    # a short-format TextGrid (as Praat also writes) reads the same
    short = ('File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n2\n<exists>\n1\n"IntervalTier"\n"words"\n'
             '0\n2\n3\n0\n0.25\n""\n0.25\n0.5\n"Take"\n0.5\n2\n""\n')
    (tmp_path / "short.TextGrid").write_text(short)
    assert read_alignments(tmp_path / "short.TextGrid")["short"] == [AlignedWord("Take", 0.25, 0.5)]


def test_evaluation_pairs_words_by_text_and_counts_misses():
    reference = {"u": [AlignedWord("the", 0.0, 0.2), AlignedWord("dose", 0.2, 0.6), AlignedWord("was", 0.7, 0.9)]}
    hypothesis = {"u": [AlignedWord("The", 0.01, 0.22), AlignedWord("dose,", 0.25, 0.6)]}
    errors = evaluate_alignments(reference, hypothesis)
    assert (errors.reference_words, errors.matched_words) == (3, 2)
    assert errors.words_aligned_pct == pytest.approx(200 / 3)
    assert errors.mean_start_ms == pytest.approx(30.0)
    assert errors.mean_end_ms == pytest.approx(10.0)
    assert errors.within_20ms_pct == pytest.approx(75.0)  # 10, 20 within; 50 not; 0 within


def test_bad_input_each_ends_ok_or_failed_with_a_specific_reason(tmp_path):
    """The [align] bad-input list through `jstip align`: nothing crashes, nothing is dropped."""
    import numpy as np
    import soundfile as sf
    import soxr

    import dataclasses

    from jstip.synth import demo_utterances, synthesize_in_fresh_process

    text = "Please refill the lisinopril prescription today."
    # in a fresh process: libespeak-ng's output depends on what the process spoke before, and transcript
    # verification's verdict on the 8 kHz copy must not depend on which tests ran first
    script = dataclasses.replace(demo_utterances(1, 0)[0], text=text, voice="en-us", rate=160, noise_seed=1)
    speech, = synthesize_in_fresh_process([script])
    pcm = speech.samples.astype(np.float32) / 32768.0
    lead = np.zeros(int(0.3 * speech.sample_rate), dtype=np.float32)
    pcm = np.concatenate([lead, pcm, lead])
    sf.write(tmp_path / "ok22k.wav", pcm, speech.sample_rate, subtype="PCM_16")
    sf.write(tmp_path / "ok8k.wav", soxr.resample(pcm, speech.sample_rate, 8000), 8000, subtype="PCM_16")
    at48k = soxr.resample(pcm, speech.sample_rate, 48000)
    sf.write(tmp_path / "stereo48k.wav", np.stack([at48k, at48k], axis=1), 48000, subtype="PCM_16")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    (tmp_path / "empty.wav").write_bytes(b"")
    nan = pcm.copy()
    nan[1000] = np.nan
    sf.write(tmp_path / "nan.wav", nan, speech.sample_rate, subtype="FLOAT")
    entries = [("ok22k.wav", text), ("ok8k.wav", text), ("stereo48k.wav", text), ("corrupt.wav", text),
               ("empty.wav", text), ("nan.wav", text),
               ("ok22k.wav", "Transfer two thousand dollars from my Premier Savings account to checking on "
                             "Friday morning before the branch closes and confirm the wire by email.")]
    lines = [json.dumps({"audio_filepath": str(tmp_path / a), "text": t, "id": f"u{k}"}).encode()
             for k, (a, t) in enumerate(entries)]
    lines.append(b'{"audio_filepath": "' + str(tmp_path / "ok22k.wav").encode() + b'", "text": "caf\xe9 \xff", "id": "latin1"}')
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["align", str(tmp_path / "m.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "failed", "failed", "failed", "failed"]
    for r in rows[:3]:
        assert [w["word"] for w in r["words"]] == split_words(text)
    # the same speech at 22.05, 8 and 48 kHz stereo aligns to nearly the same times (8 kHz loses the
    # fricative energy above 4 kHz, which moves a boundary by up to a few frames)
    for other in rows[1:3]:
        assert max(abs(a["start"] - b["start"]) for a, b in zip(rows[0]["words"], other["words"])) <= 0.06
    reasons = [r["reason"] for r in rows[3:]]
    assert "cannot decode audio" in reasons[0] and "corrupt.wav" in reasons[0]
    assert "empty.wav is empty (0 bytes)" in reasons[1]
    assert "nan.wav holds NaN/inf samples" in reasons[2]
    assert "pocketsphinx alignment failed" in reasons[3]  # a transcript of other words
    assert "m.jsonl:8: line is not UTF-8: 'utf-8' codec can't decode" in reasons[4]


def test_help_lists_the_choices_and_a_wrong_one_is_refused(tmp_path):
    shown = runner.invoke(app, ["align", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert all(choice in shown.output for choice in ("pocketsphinx", "whisperx", "nemo", "jsonl", "ctm", "textgrid"))
    refused = runner.invoke(app, ["align", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                                  "--aligner", "kaldi"])
    assert refused.exit_code == 2 and "'kaldi' is not one of" in refused.output
    assert not (tmp_path / "o.jsonl").exists()


def test_the_command_line_choices_are_the_modules_own():
    from jstip.cli.alignment import AlignerName, AlignmentFormat
    from jstip.cli.catalog import ExportFormat
    from jstip.storage.export import EXPORT_FORMATS
    from jstip.tasks.aligners import ALIGNERS
    from jstip.tasks.aligners.align_manifest import OUTPUT_FORMATS

    assert [a.value for a in AlignerName] == list(ALIGNERS)
    assert [f.value for f in AlignmentFormat] == list(OUTPUT_FORMATS)
    assert [f.value for f in ExportFormat] == list(EXPORT_FORMATS)


def test_align_confines_audio_like_a_build_and_allow_root_admits_it(manifest, tmp_path):
    """`jstip align` runs the build's ingest: audio outside the manifest's directory is refused (exit 2, naming
    --allow-root) before any audio work, and admitted with --allow-root."""
    path, good, _ = manifest
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m.jsonl").write_text(json.dumps(good[0]) + "\n")  # its audio lies in the fixture's directory
    out = tmp_path / "out.jsonl"
    refused = runner.invoke(app, ["align", str(elsewhere / "m.jsonl"), "--out", str(out)])
    assert refused.exit_code == 2, refused.output
    assert "--allow-root" in refused.output and not out.exists()
    admitted = runner.invoke(app, ["align", str(elsewhere / "m.jsonl"), "--out", str(out),
                                   "--allow-root", str(path.parent)])
    assert admitted.exit_code == 0, admitted.output
    row, = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["status"] == "ok" and [w["word"] for w in row["words"]] == split_words(good[0]["text"])
