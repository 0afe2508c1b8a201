"""Transcript tokens as spoken words: exact readings per category, and the mapping back to tokens."""

from __future__ import annotations

import re

import pytest

from jstip.tasks.text import split_words
from jstip.tasks.aligners.textnorm import MAX_ALTERNATIVES, normalize_for_alignment, preferred_words, spoken_forms


def _w(spec: str) -> tuple[str, ...]:
    return tuple(spec.split())


# token, preferred reading (exact), other readings that must be among the alternatives
CASES = [
    # words: case, surrounding punctuation, apostrophes, compounds
    ("Metformin,", "metformin", []),
    ("(see)", "see", []),
    ("\u201cDon\u2019t", "don't", []),
    ("patient's", "patient's", []),
    ("patients'", "patients", []),
    ("O'Brien", "o'brien", []),
    ("follow-up", "follow up", []),
    ("10-year-old", "ten year old", []),
    ("and/or", "and or", ["and slash or"]),
    ("he/she", "he she", ["he or she"]),
    ("café", "cafe", []),
    ("AT&T", "a t and t", []),
    ("example.com", "example dot com", []),
    # cardinals, decimals, signs, percent
    ("250", "two hundred fifty", ["two hundred and fifty"]),
    ("2,500", "two thousand five hundred", ["twenty five hundred"]),
    ("1,000", "one thousand", []),
    ("3500", "three thousand five hundred", ["thirty five hundred"]),
    ("2.5", "two point five", []),
    ("2.05", "two point zero five", ["two point oh five"]),
    ("0.5", "zero point five", ["point five"]),
    (".5", "point five", ["zero point five"]),
    ("-5", "minus five", ["negative five"]),
    ("~5", "about five", ["approximately five"]),
    ("#5", "number five", ["five"]),
    ("50%", "fifty percent", []),
    ("3.5%", "three point five percent", []),
    ("007", "zero zero seven", ["oh oh seven", "seven"]),
    ("94110", "nine four one one zero", ["ninety four thousand one hundred ten"]),
    ("12000", "twelve thousand", []),
    # ranges, years, decades, ordinals
    ("10-20", "ten to twenty", ["ten through twenty", "ten twenty"]),
    ("10-20mg", "ten to twenty milligrams", []),
    ("2019-2020", "twenty nineteen to twenty twenty", []),
    ("1999", "nineteen ninety nine", ["one thousand nine hundred ninety nine"]),
    ("2019", "twenty nineteen", ["two thousand nineteen", "two thousand and nineteen"]),
    ("2005", "two thousand five", ["two thousand and five"]),
    ("1990s", "nineteen nineties", []),
    ("'90s", "nineties", []),
    ("3rd", "third", []),
    ("21st", "twenty first", []),
    # fractions, ratios, times
    ("1/2", "one half", ["a half", "one over two"]),
    ("3/4", "three quarters", ["three fourths"]),
    ("2/3", "two thirds", []),
    ("1½", "one and a half", []),
    ("120/80", "one twenty over eighty", ["one hundred twenty over eighty"]),
    ("24/7", "twenty four seven", []),
    ("2:1", "two to one", []),
    ("3:30", "three thirty", []),
    ("3:05", "three oh five", ["three zero five"]),
    ("3:30:15", "three thirty fifteen", []),
    ("3:00", "three o'clock", ["three"]),
    ("15:00", "fifteen hundred", ["fifteen hundred hours"]),
    ("3pm", "three p m", ["three"]),
    ("3:30pm", "three thirty p m", ["three thirty"]),
    ("10:45a.m.", "ten forty five a m", []),
    # currency
    ("$250", "two hundred fifty dollars", ["two hundred and fifty dollars"]),
    ("$1", "one dollar", []),
    ("$2.50", "two dollars fifty cents", ["two fifty", "two dollars and fifty cents", "two dollars fifty"]),
    ("$2.05", "two dollars five cents", ["two oh five"]),
    ("$0.50", "fifty cents", []),
    ("$2,500.75", "two thousand five hundred dollars seventy five cents", []),
    ("£5", "five pounds", []),
    ("£1.50", "one pound fifty pence", []),
    ("€20", "twenty euros", []),
    ("20€", "twenty euros", []),
    ("$5k", "five thousand dollars", ["five k"]),
    ("$1.2M", "one point two million dollars", []),
    ("-$5", "minus five dollars", []),
    ("$10-20", "ten to twenty dollars", ["ten dollars to twenty dollars"]),
    # units attached and alone
    ("500mg", "five hundred milligrams", ["five hundred m g"]),
    ("1mg", "one milligram", []),
    ("2.5mg", "two point five milligrams", []),
    ("10ml", "ten milliliters", []),
    ("10mL", "ten milliliters", []),
    ("5kg", "five kilograms", ["five kilos"]),
    ("3km", "three kilometers", []),
    ("98.6°F", "ninety eight point six degrees fahrenheit", []),
    ("5k", "five thousand", ["five k"]),
    ("1.2M", "one point two million", []),
    ("5m", "five meters", ["five million"]),
    ("3x", "three times", []),
    ("mg", "milligrams", ["milligram", "m g"]),
    ("mmHg", "millimeters of mercury", []),
    ("10mg/kg", "ten milligrams per kilogram", []),
    ("5mg/day", "five milligrams per day", ["five milligrams a day"]),
    # dates
    ("3/14/2024", "march fourteenth twenty twenty four",
     ["march fourteenth two thousand twenty four", "three fourteen twenty twenty four"]),
    ("2024-03-14", "march fourteenth twenty twenty four", []),
    ("3-14-2024", "march fourteenth twenty twenty four", []),
    ("14/3/2024", "the fourteenth of march twenty twenty four", ["march fourteenth twenty twenty four"]),
    ("3/14/24", "march fourteenth twenty four", ["march fourteenth twenty twenty four"]),
    ("3/14", "march fourteenth", ["three fourteenths"]),
    ("555-1234", "five five five one two three four", []),
    # abbreviations and acronyms
    ("Dr.", "doctor", ["drive"]),
    ("Mr.", "mister", []),
    ("Mrs.", "missus", []),
    ("Ms.", "miz", []),
    ("St.", "saint", ["street"]),
    ("Jr.", "junior", []),
    ("vs.", "versus", []),
    ("etc.)", "et cetera", []),
    ("e.g.,", "for example", ["e g"]),
    ("i.e.", "that is", ["i e"]),
    ("approx.", "approximately", []),
    ("No.", "no", ["number"]),
    ("Apr.", "april", []),
    ("U.S.", "u s", []),
    ("APR", "a p r", []),
    ("ATM", "a t m", []),
    ("ATMs", "a t m's", []),
    ("PIN", "pin", ["p i n"]),
    ("IRA", "i r a", ["ira"]),
    ("CD", "c d", []),
    ("MRI", "m r i", []),
    ("CT", "c t", []),
    ("ECG", "e c g", []),
    ("EKG", "e k g", []),
    ("IV", "i v", []),
    ("BP", "b p", []),
    ("HIV", "h i v", []),
    ("COVID-19", "covid nineteen", []),
    ("LDL", "l d l", []),
    ("FBI", "f b i", ["fbi"]),
    ("NASA", "nasa", ["n a s a"]),
    ("CEO's", "c e o's", []),
    ("401(k)", "four oh one k", []),
    ("B12", "b twelve", []),
    ("A1C", "a one c", []),
    ("mp3", "m p three", []),
    # nothing speakable but an underscore
    ("_", "underscore", []),
]


@pytest.mark.parametrize("token, preferred, others", CASES, ids=[c[0] for c in CASES])
def test_spoken_forms(token, preferred, others):
    forms = spoken_forms(token)
    assert forms[0] == _w(preferred)
    for other in others:
        assert _w(other) in forms, f"{token!r}: {other!r} missing from {forms}"


def test_every_form_is_plain_lowercase_words_deduplicated_and_capped():
    text = " ".join(token for token, _, _ in CASES) + " Xarelto, he's I'm rock'n'roll __init__ 1.2.3 Ph.D. C++"
    for token in split_words(text):
        forms = spoken_forms(token)
        assert forms, token
        assert len(forms) == len(set(forms)) <= MAX_ALTERNATIVES, token
        for form in forms:
            assert form and all(re.fullmatch(r"[a-z]+(?:'[a-z]+)*", w) for w in form), (token, form)


def test_other_scripts_are_kept_as_letters():
    assert spoken_forms("你好。") == [("你好",)]


def test_preferred_words_map_back_to_transcript_tokens():
    text = "Dr. Patel prescribed 500mg of Metformin on 3/14/2024 for $250."
    words, token_index = preferred_words(text)
    assert words == ("doctor patel prescribed five hundred milligrams of metformin on march fourteenth twenty "
                     "twenty four for two hundred fifty dollars").split()
    assert token_index == [0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7, 7, 7, 7, 8, 9, 9, 9, 9]
    tokens = split_words(text)
    assert [tokens[i] for i in sorted(set(token_index))] == tokens  # every token owns a run of words


def test_context_reorders_but_never_changes_the_alternatives():
    text = "See No. 5 at 9 am on Elm St. with Dr. Nguyen, take 1 1/2 tabs. No."
    tokens = split_words(text)
    in_context = normalize_for_alignment(text)
    for token, forms in zip(tokens, in_context):
        assert sorted(forms) == sorted(spoken_forms(token))
    assert [forms[0] for forms in in_context] == [_w(s) for s in (
        "see", "number", "five", "at", "nine", "a m", "on", "elm", "street", "with", "doctor", "nguyen", "take",
        "one", "and a half", "tabs", "no")]


def test_upper_case_transcripts_read_words_as_words():
    words, token_index = preferred_words("THE STRENGTH OF THE MRI IS IN US")
    assert words == "the strength of the m r i is in us".split()
    assert token_index == [0, 1, 2, 3, 4, 4, 4, 5, 6, 7]
    assert preferred_words("The MRI and US tests")[0] == "the m r i and u s tests".split()  # not upper case
