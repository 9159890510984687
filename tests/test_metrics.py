"""The eval image's metric definitions, on vectors derived by hand from the published definitions.

`images/eval/hb_metrics.py` and `hb_stats.py` are the very files the eval image
runs; they are imported here from the host venv. Every expected value below is
derived in a comment from the definition the metric follows (sources in
hb_metrics.NORMALIZATION and images/eval/README.md) and, where an established
library exists, cross-checked against it (jiwer for CER/WER, rapidfuzz's
Levenshtein for NED/ANLS distances, and a transcription of the official
DocVQA/RRC ANLS loop with its own pure-Python Levenshtein).

The last test runs the real eval image by hand, exactly as the README shows.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jiwer
import pytest
from rapidfuzz.distance import Levenshtein

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images" / "eval"))

import evaluate as ev  # noqa: E402
import hb_bootstrap  # noqa: E402
import hb_metrics as hm  # noqa: E402
import hb_stats  # noqa: E402

VERSION = (ROOT / "images" / "VERSION").read_text().strip()
EVAL_IMAGE = os.environ.get("HB_TEST_EVAL_IMAGE", f"hyperbench/eval:{VERSION}")


# ============================================================================ CER / WER / NED


def test_cer_wer_single_substitution() -> None:
    # "abcd" -> "abxd": one substitution (c->x) over 4 reference chars: CER = 1/4.
    # One reference word, substituted: WER = 1/1.
    s = hm.ocr_score("abcd", "abxd")
    assert (s.char_edits, s.char_ref_len, s.cer) == (1, 4, 0.25)
    assert (s.word_edits, s.word_ref_len, s.wer) == (1, 1, 1.0)
    assert s.cer == pytest.approx(jiwer.cer("abcd", "abxd"))
    # NED = 1 / max(4, 4)
    assert s.ned == 0.25 == pytest.approx(Levenshtein.normalized_distance("abcd", "abxd"))


def test_corpus_cer_is_total_edits_over_total_reference_not_mean() -> None:
    # refs: "abcd" (4 chars, 1 word), "hello world" (11 chars, 2 words)
    # preds: "abxd" (1 sub), "hello  world\n" -> normalized "hello world" (0 edits)
    # corpus CER = (1 + 0) / (4 + 11) = 1/15; per-sample mean = (1/4 + 0) / 2 = 0.125
    # corpus WER = (1 + 0) / (1 + 2) = 1/3;   per-sample mean = (1 + 0) / 2 = 0.5
    refs, preds = ["abcd", "hello world"], ["abxd", "hello  world\n"]
    scores = [hm.ocr_score(r, p) for r, p in zip(refs, preds, strict=True)]
    cer = hm.corpus_rate([s.char_edits for s in scores], [s.char_ref_len for s in scores])
    wer = hm.corpus_rate([s.word_edits for s in scores], [s.word_ref_len for s in scores])
    assert cer == pytest.approx(1 / 15)
    assert wer == pytest.approx(1 / 3)
    assert sum(s.cer for s in scores) / 2 == pytest.approx(0.125)
    assert sum(s.wer for s in scores) / 2 == pytest.approx(0.5)
    norm = [hm.normalize_ocr(p) for p in preds]
    assert cer == pytest.approx(jiwer.cer(refs, norm))
    assert wer == pytest.approx(jiwer.wer(refs, norm))


def test_cer_above_one_with_insertions_but_ned_capped() -> None:
    # "a" -> "abc": 2 insertions over 1 reference char: CER = 2 (CER is unbounded).
    # NED = 2 / max(1, 3) = 2/3 (never above 1).
    s = hm.ocr_score("a", "abc")
    assert s.cer == 2.0 == pytest.approx(jiwer.cer("a", "abc"))
    assert s.ned == pytest.approx(2 / 3)
    # completely different, longer prediction: "ab" -> "xyzw": 2 subs + 2 ins = 4 edits, NED = 4/4 = 1
    assert hm.ocr_score("ab", "xyzw").ned == 1.0


def test_empty_strings() -> None:
    # both empty: nothing to read, nothing read -> 0 everywhere
    s = hm.ocr_score("", "")
    assert (s.char_edits, s.char_ref_len, s.cer, s.wer, s.ned) == (0, 0, 0.0, 0.0, 0.0)
    # empty prediction: every reference char deleted -> CER = WER = NED = 1 (never perfect)
    s = hm.ocr_score("abc", "")
    assert (s.char_edits, s.cer, s.wer, s.ned) == (3, 1.0, 1.0, 1.0)
    assert s.cer == pytest.approx(jiwer.cer("abc", ""))
    # empty reference, non-empty prediction: 2 insertions / max(0, 1) = 2 (jiwer's rule); NED = 2/2 = 1
    s = hm.ocr_score("", "xy")
    assert (s.char_edits, s.char_ref_len, s.cer, s.ned) == (2, 0, 2.0, 1.0)
    assert s.cer == pytest.approx(jiwer.cer("", "xy"))
    # corpus rate with an all-empty reference set divides by 1, like jiwer
    assert hm.corpus_rate([2], [0]) == 2.0


def test_whitespace_runs_and_line_breaks_cost_nothing() -> None:
    # normalization: every whitespace run -> one space, stripped
    assert hm.normalize_ocr("  a \t b\n\nc  ") == "a b c"
    s = hm.ocr_score("Invoice total 42", "Invoice\ntotal\t\t42 ")
    assert (s.char_edits, s.word_edits, s.ned) == (0, 0, 0.0)


def test_unicode_nfc_but_not_nfkc() -> None:
    # U+00E9 vs "e" + U+0301 (combining acute): canonically equivalent, NFC makes them equal.
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert hm.ocr_score(composed, decomposed).cer == 0.0
    # Without NFC they would differ by 2 edits (e/é substitution + inserted combining mark):
    assert Levenshtein.distance(composed, decomposed) == 2
    # NFKC is NOT applied: the ligature U+FB01 ("ﬁ", 1 char) stays distinct from "fi".
    # ref "ﬁne" (3 chars) -> pred "fine": ﬁ->f substitution + i insertion = 2 edits; CER = 2/3.
    s = hm.ocr_score("\ufb01ne", "fine")
    assert s.cer == pytest.approx(2 / 3)
    assert s.cer == pytest.approx(jiwer.cer("\ufb01ne", "fine"))
    # case is kept: "A" vs "a" is one substitution
    assert hm.ocr_score("Abc", "abc").char_edits == 1


def test_ned_matches_rapidfuzz_on_random_strings() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        assert hm.ned(a, b) == pytest.approx(Levenshtein.normalized_distance(a, b))


def test_ocr_counts_equal_jiwers_on_random_strings() -> None:
    # hb_metrics.ocr_score computes jiwer 4's counts with rapidfuzz directly: the same numbers
    rng = random.Random(11)
    alphabet = ["a", "b", "c", "ab", " ", "  ", "\n", "\t", "\u00a0", "e\u0301", "\u00e9", "\ufb01", "."]
    for _ in range(2_000):
        ref = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        hyp = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        s = hm.ocr_score(ref, hyp)
        r, h = hm.normalize_ocr(ref), hm.normalize_ocr(hyp)
        co, wo = jiwer.process_characters(r, h), jiwer.process_words(r, h)
        assert s.char_edits == co.substitutions + co.deletions + co.insertions, (ref, hyp)
        assert s.char_ref_len == co.substitutions + co.deletions + co.hits, (ref, hyp)
        assert s.word_edits == wo.substitutions + wo.deletions + wo.insertions, (ref, hyp)
        assert s.word_ref_len == wo.substitutions + wo.deletions + wo.hits, (ref, hyp)
        assert s.ned == hm.ned(r, h), (ref, hyp)
        if r:
            assert s.cer == pytest.approx(jiwer.cer(r, h))
            assert s.wer == pytest.approx(jiwer.wer(r, h))


# ============================================================================ ANLS


def _official_levenshtein(s1: str, s2: str) -> int:
    # transcription of levenshtein_distance() of the official infographicsvqa_eval.py
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = list(range(len(s1) + 1))
    for i2, c2 in enumerate(s2):
        distances_ = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                distances_.append(distances[i1])
            else:
                distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
        distances = distances_
    return distances[-1]


def _official_anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    # transcription of the per-question loop of the official DocVQA/RRC script
    values = []
    for answer in answers:
        gt_answer = " ".join(answer.strip().lower().split())
        det_answer = " ".join(prediction.strip().lower().split())
        dist = _official_levenshtein(gt_answer, det_answer)
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(dist) / float(length))
    question_result = 1 - min(values)
    if question_result < threshold:
        question_result = 0
    return question_result


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # identical after normalization
        ("42.5", ["42.50", "42.5"], 1.0),
        ("HELLO", ["hello"], 1.0),
        ("total  due", ["total due"], 1.0),  # whitespace runs collapse for the distance
        # "acme corp." vs "acme corp": 1 deletion; length = max(9, 10) raw = 10 -> NL 0.1 -> 0.9
        ("acme corp.", ["ACME Corp"], 0.9),
        # exactly 0.5 is KEPT: "abef" vs "abcd": 2 substitutions / 4 = 0.5 -> 1 - 0.5 = 0.5
        ("abef", ["abcd"], 0.5),
        ("ax", ["ab"], 0.5),
        # just below: "axy" vs "abc": 2 / 3 -> 1/3 < 0.5 -> 0
        ("axy", ["abc"], 0.0),
        # max over answers: vs "abc" NL = 1/3 -> 2/3; vs "wrong thing" -> 0
        ("abd", ["wrong thing", "abc"], 2 / 3),
        # raw-length quirk: the distance is on "ab" vs "ax" (1), the length on the RAW answer
        # "  ab  " (6 chars): NL = 1/6 -> 5/6. With normalized lengths it would be 1/2 -> 0.5.
        ("ax", ["  ab  "], 5 / 6),
        # empty prediction vs a non-empty answer: NL = 3/3 -> 0
        ("", ["abc"], 0.0),
        # both empty: the script's length-0 rule gives NL = 0 -> 1 (the eval marks such a
        # sample no_reference and scores it 0, see test_eval_vqa_policies)
        ("", [""], 1.0),
    ],
)
def test_anls_vectors(prediction: str, answers: list[str], expected: float) -> None:
    got = hm.anls(prediction, answers)
    assert got == pytest.approx(expected)
    assert got == pytest.approx(_official_anls(prediction, answers))


def test_anls_equals_official_script_on_random_strings() -> None:
    rng = random.Random(11)
    alphabet = "aAbB c.\t"
    for _ in range(500):
        answers = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 3))
        ]
        pred = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert hm.anls(pred, answers) == pytest.approx(_official_anls(pred, answers)), (pred, answers)
        # the distance itself equals rapidfuzz's Levenshtein on the collapsed strings
        a = answers[0]
        assert _official_levenshtein(
            " ".join(a.strip().lower().split()), " ".join(pred.strip().lower().split())
        ) == (
            Levenshtein.distance(" ".join(a.strip().lower().split()), " ".join(pred.strip().lower().split()))
        )


# ============================================================================ exact match


def test_exact_match_normalization() -> None:
    # NFKC + lower + collapsed whitespace + strip
    assert hm.exact_match("  Hello   World ", ["hello world"]) == 1.0
    assert hm.exact_match("\ufb01ve", ["five"]) == 1.0  # NFKC folds the ligature
    assert hm.exact_match("ＡＢＣ", ["abc"]) == 1.0  # full-width letters fold too
    assert hm.exact_match("hello world.", ["hello world"]) == 0.0  # punctuation kept
    assert hm.exact_match("", ["x"]) == 0.0
    assert hm.exact_match("b", ["a", "B"]) == 1.0  # any answer


# ============================================================================ VQA accuracy


def _official_vqa_loop(prediction: str, answers: list[str]) -> float:
    """The accuracy loop of GT-Vision-Lab vqaEval.py (VQAEval.evaluate), transcribed line by line.

    Answers are dicts with a unique answer_id as in the VQA v2 annotations, so
    ``item != gtAnsDatum`` drops exactly one answer per subset. The two text
    processors are hm's ports, checked on their own vectors below.
    """
    gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]
    res_ans = prediction.replace("\n", " ").replace("\t", " ").strip()
    res_ans = hm._vqa_digit_article(hm._vqa_punctuation(res_ans))
    gt_acc = []
    if len({g["answer"] for g in gts}) > 1:
        for ans_dic in gts:
            ans_dic["answer"] = hm._vqa_punctuation(str(ans_dic["answer"]))
    for datum in gts:
        other = [item for item in gts if item != datum]
        matching = [item for item in other if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching)) / 3))
    return float(sum(gt_acc)) / len(gt_acc)


def test_vqa_accuracy_leave_one_out_ten_answers() -> None:
    # 10 answers, 2 say "2", 8 say "3"; prediction "two" -> "2" (the prediction's number word is
    # mapped). Leaving out one of the two "2": 1 match left -> 1/3 (2 subsets);
    # leaving out one of the eight "3": 2 matches -> 2/3 (8 subsets).
    # mean = (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 0.6
    answers = ["2"] * 2 + ["3"] * 8
    assert hm.vqa_accuracy("two", answers) == pytest.approx(0.6)
    # 3 of 10 match: leaving out a match -> 2/3 (3 subsets), else 3/3 -> 1 (7): (2 + 7) / 10 = 0.9
    assert hm.vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    # >= 4 matches: every subset keeps >= 3 matches -> 1
    assert hm.vqa_accuracy("3", answers) == 1.0
    # 1 of 10: leaving it out -> 0; else 1/3 (9 subsets) -> 9 * (1/3) / 10 = 0.3
    assert hm.vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    assert hm.vqa_accuracy("bird", ["cat"] + ["dog"] * 9) == 0.0


def test_vqa_answer_processing_is_the_official_one() -> None:
    # The prediction's processing (vqaEval.py: newline/tab -> space, strip, processPunctuation,
    # processDigitArticle). Punctuation not next to a space -> replaced by a space; articles
    # removed; lower-cased.
    assert hm.normalize_vqa_answer("The dog!") == "dog"
    assert hm.normalize_vqa_answer("a red-car") == "red car"
    # a digit,digit comma anywhere -> every listed punctuation mark is deleted outright
    assert hm.normalize_vqa_answer("1,000") == "1000"
    # a period followed by a digit stays, other periods go
    assert hm.normalize_vqa_answer("3.5") == "3.5"
    assert hm.normalize_vqa_answer("the end.") == "end"
    # contractions restored, number words mapped
    assert hm.normalize_vqa_answer("dont know") == "don't know"
    assert hm.normalize_vqa_answer("Ten\tbirds\n") == "10 birds"
    # The answers are compared as stored when all are identical (vqaEval.py processes them only
    # when len(set(gtAnswers)) > 1, and then with processPunctuation alone). Derived by hand:
    # "The Dog!" -> "dog"; every answer "dog"; each subset keeps 9 matches -> min(1, 9/3) = 1.
    assert hm.vqa_accuracy("The Dog!", ["dog"] * 10) == 1.0
    # "1000" -> "1000"; the ten identical answers stay "1,000" -> no match in any subset -> 0.
    assert hm.vqa_accuracy("1000", ["1,000"] * 10) == 0.0
    # "two" -> "2" (the prediction's number word mapped); the answers stay "two" -> 0.
    assert hm.vqa_accuracy("two", ["two"] * 10) == 0.0
    # Nor are the answers lower-cased: "yes" never equals a stored "Yes".
    assert hm.vqa_accuracy("yes", ["Yes"] * 10) == 0.0
    # Differing answers get processPunctuation only: "1,000" -> "1000" (comma between digits),
    # "1000" stays. The prediction "1,000" -> "1000". Each subset of 1 keeps 1 match -> 1/3.
    assert hm.vqa_accuracy("1,000", ["1000", "1,000"]) == pytest.approx(1 / 3)
    # ... but no article removal on the answers: 9 x "the end" stay "the end", 1 x "end" matches
    # the prediction "the end" -> "end". Leaving out a "the end" keeps the one "end": 1/3 (9x);
    # leaving out "end": 0. (9 / 3) / 10 = 0.3 (lmms-eval, which also runs processDigitArticle on
    # the answers, would give 1.0 here.)
    assert hm.vqa_accuracy("the end", ["the end"] * 9 + ["end"]) == pytest.approx(0.3)
    # The period rule on an answer: "42.50" keeps its period (a digit follows) -> no match for
    # "42.5"; "42.5" matches. Leaving out "42.50": 1/3; leaving out "42.5": 0 -> 1/6.
    assert hm.vqa_accuracy("42.5", ["42.50", "42.5"]) == pytest.approx(1 / 6)
    # Surrounding space on the prediction is stripped; answers with a space inside differ.
    assert hm.vqa_accuracy(" yes\n", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_with_fewer_answers_follows_the_same_definition() -> None:
    # No special case for N < 10: acc = mean over the N answers of min(1, matches among the
    # other N - 1 / 3), as vqaEval.py computes for any N.
    # N = 1: the only subset is empty -> 0, whatever the prediction.
    assert hm.vqa_accuracy("cat", ["cat"]) == 0.0
    # N = 2 identical: each subset keeps 1 match -> 1/3.
    assert hm.vqa_accuracy("yes", ["yes", "yes"]) == pytest.approx(1 / 3)
    # N = 2 differing: leaving out "yes" -> 0, leaving out "no" -> 1/3 -> 1/6.
    assert hm.vqa_accuracy("Yes", ["yes", "no"]) == pytest.approx(1 / 6)
    # N = 3 identical: each subset keeps 2 -> 2/3, the most three answers can give.
    assert hm.vqa_accuracy("yes", ["yes"] * 3) == pytest.approx(2 / 3)
    assert hm.vqa_accuracy("maybe", ["yes", "no", "yes"]) == 0.0
    # N = 4: 3 matches: leaving out a match -> 2/3 (3x), else 1 -> 0.75
    assert hm.vqa_accuracy("yes", ["yes", "yes", "yes", "no"]) == pytest.approx((3 * 2 / 3 + 1) / 4)
    # no answers: scored 0 (the official loop would divide by zero; see POLICY)
    assert hm.vqa_accuracy("x", []) == 0.0


@pytest.mark.parametrize(
    ("prediction", "answers"),
    [
        ("two", ["2"] * 2 + ["3"] * 8),
        ("two", ["two"] * 10),
        ("2", ["two"] * 9 + ["2"]),
        ("1000", ["1,000"] * 10),
        ("1,000", ["1000", "1,000", "1,000"]),
        ("The end.", ["the end"] * 9 + ["end"]),
        ("red car", ["red-car", "red car", "red car", "red car", "red car"]),
        ("yes", ["yes"] * 10),
        ("cat", ["cat"]),
        ("no", ["no", "No", "no ", "nope"]),
    ],
)
def test_vqa_accuracy_agrees_with_the_official_loop(prediction: str, answers: list[str]) -> None:
    assert hm.vqa_accuracy(prediction, answers) == pytest.approx(_official_vqa_loop(prediction, answers))


# ============================================================================ relaxed accuracy


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("12.3", "12", 1.0),  # |12.3 - 12| / 12 = 0.025 <= 0.05
        ("12.7", "12", 0.0),  # 0.7 / 12 = 0.0583 > 0.05
        ("105", "100", 1.0),  # exactly 5 % is inside (<=)
        ("95", "100", 1.0),
        ("94.9", "100", 0.0),  # 5.1 %
        ("45%", "0.45", 1.0),  # '%' divides by 100: 0.45 vs 0.45
        ("45%", "45", 0.0),  # 0.45 vs 45 (pix2struct behaviour, kept)
        ("45.5%", "45%", 1.0),  # 0.455 vs 0.45: 1.1 %
        ("1,234", "1234", 1.0),  # thousands separator accepted (our extension)
        ("1,200", "1,234", 1.0),  # 34 / 1234 = 2.8 %
        ("1,234,567.5", "1234567", 1.0),
        ("1,23", "123", 0.0),  # not a thousands grouping -> strings compared -> differ
        (" 7 ", "7", 1.0),  # whitespace stripped
        ("Yes", "yes", 1.0),  # non-numeric: case-insensitive string equality
        ("no", "yes", 0.0),
        ("0", "0.0", 0.0),  # zero answer: relative change undefined -> string equality (pix2struct)
        ("0", "0", 1.0),
        ("nan", "nan", 1.0),  # not a number for us -> string equality
    ],
)
def test_relaxed_accuracy_vectors(prediction: str, answer: str, expected: float) -> None:
    assert hm.relaxed_accuracy(prediction, [answer]) == expected


def test_relaxed_accuracy_max_over_answers() -> None:
    assert hm.relaxed_accuracy("50", ["10", "49"]) == 1.0  # 1/49 = 2 % vs the second answer
    assert hm.parse_number("12.5%") == pytest.approx(0.125)
    assert hm.parse_number("1,000") == 1000.0
    assert hm.parse_number("abc") is None


# ============================================================================ OCRBench


def test_ocrbench_substring_case_insensitive() -> None:
    assert hm.ocrbench("The answer is CENTRAL park.", ["central park"]) == 1.0
    assert hm.ocrbench("central", ["central park"]) == 0.0
    assert hm.ocrbench("x", ["no", "X"]) == 1.0
    # newlines become spaces on both sides
    assert hm.ocrbench("line one\nline two", ["one line two"]) == 1.0
    # an empty answer is ignored (it would otherwise be a substring of anything)
    assert hm.ocrbench("anything", [""]) == 0.0


def test_ocrbench_handwritten_math() -> None:
    sample = {"dataset_name": "HME100k"}
    assert hm.is_handwritten_math(sample)
    assert hm.is_handwritten_math({"type": "Handwritten Mathematical Expression Recognition"})
    assert hm.is_handwritten_math({"category": "Handwritten Mathematical Expression Recognition"})
    assert not hm.is_handwritten_math({"category": "Doc-oriented VQA"})
    # spaces removed on both sides, case KEPT
    assert hm.ocrbench("x ^ { 2 } + 1", ["x^{2}+1"], handwritten_math=True) == 1.0
    assert hm.ocrbench("X^{2}", ["x^{2}"], handwritten_math=True) == 0.0
    assert hm.ocrbench("X^{2}", ["x^{2}"], handwritten_math=False) == 1.0
    assert hm.vqa_scores("x ^ 2", ["x^2"], sample)["ocrbench"] == 1.0
    assert hm.vqa_scores("x ^ 2", ["x^2"], {})["ocrbench"] == 0.0  # "x ^ 2" does not contain "x^2"


# ============================================================================ bootstrap


def test_percentile_is_linear_interpolation() -> None:
    assert hb_stats.percentile([1, 2, 3, 4], 50) == 2.5
    assert hb_stats.percentile([1, 2, 3, 4], 0) == 1
    assert hb_stats.percentile([1, 2, 3, 4], 100) == 4
    # (5 - 1) * 0.025 = 0.1 -> 10 + 0.1 * (20 - 10) = 11
    assert hb_stats.percentile([10, 20, 30, 40, 50], 2.5) == pytest.approx(11.0)


def test_bootstrap_is_deterministic_and_brackets_the_value() -> None:
    values = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75]
    stat = hb_stats.mean_stat(values)
    a = hb_stats.bootstrap_ci(len(values), {"m": stat}, 1000, 5)
    b = hb_stats.bootstrap_ci(len(values), {"m": stat}, 1000, 5)
    assert a == b
    lo, hi = a["m"]
    assert lo <= sum(values) / len(values) <= hi
    assert 0.0 <= lo < hi <= 1.0
    # constant data: a degenerate interval
    const = hb_stats.bootstrap_ci(5, {"m": hb_stats.mean_stat([0.5] * 5)}, 200, 1)
    assert const["m"] == (0.5, 0.5)


def test_paired_bootstrap() -> None:
    a = [0.2, 0.4, 0.5, 0.1, 0.9, 0.3, 0.6, 0.7, 0.2, 0.4]
    same = hb_stats.paired_bootstrap(hb_stats.mean_stat(a), hb_stats.mean_stat(a), len(a), lower_better=False)
    assert same["delta"] == 0
    assert same["p_value"] == 1.0
    assert same["prob_b_better"] == 0.5
    b = [x + 0.1 for x in a]  # B better on every sample
    r = hb_stats.paired_bootstrap(hb_stats.mean_stat(a), hb_stats.mean_stat(b), len(a), lower_better=False)
    assert r["delta"] == pytest.approx(0.1)
    assert r["ci95"][0] == pytest.approx(0.1)
    assert r["ci95"][1] == pytest.approx(0.1)
    assert r["p_value"] == 0.0
    assert r["prob_b_better"] == 1.0
    # for an error rate, lower is better: B's higher values make A the better run
    r = hb_stats.paired_bootstrap(hb_stats.mean_stat(a), hb_stats.mean_stat(b), len(a), lower_better=True)
    assert r["prob_b_better"] == 0.0
    # a noisy difference: the CI brackets the observed delta and the p-value is in (0, 1]
    rng = random.Random(3)
    noisy = [x + rng.uniform(-0.3, 0.32) for x in a]
    r = hb_stats.paired_bootstrap(
        hb_stats.mean_stat(a), hb_stats.mean_stat(noisy), len(a), lower_better=False
    )
    assert r["ci95"][0] <= r["delta"] <= r["ci95"][1]
    assert 0.0 < r["p_value"] <= 1.0


def test_ratio_statistic_matches_corpus_cer() -> None:
    rows = [{"char_edits": 1, "char_ref_len": 4}, {"char_edits": 0, "char_ref_len": 11}]
    stat = hb_stats.statistic_for("cer", rows)
    assert stat is not None
    assert stat(range(2)) == pytest.approx(1 / 15)
    assert stat([0, 0]) == pytest.approx(2 / 8)  # a resample that drew the first sample twice


def _reference_bootstrap_ci(
    n: int, columns: dict[str, tuple[str, list[float], list[float]]], resamples: int, seed: int
) -> dict[str, tuple[float, float]]:
    """The pure-Python bootstrap that hb_bootstrap vectorises (hb_stats.bootstrap_ci before numpy).

    columns: name -> ("ratio", numerators, denominators) | ("mean", values, []).
    """

    def pct(v: list[float], q: float) -> float:
        pos = (len(v) - 1) * q / 100.0
        lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    rng = random.Random(seed)
    draws: dict[str, list[float]] = {name: [] for name in columns}
    for _ in range(resamples):
        idx = rng.choices(range(n), k=n)
        for name, (kind, a, b) in columns.items():
            if kind == "ratio":
                e, d = sum(a[i] for i in idx), sum(b[i] for i in idx)
                draws[name].append(e / d if d > 0 else float(e))
            else:
                draws[name].append(sum(a[i] for i in idx) / n)
    return {name: (pct(sorted(v), 2.5), pct(sorted(v), 97.5)) for name, v in draws.items()}


def test_numpy_draws_are_random_choices_draws() -> None:
    # hb_bootstrap starts numpy's MT19937 from random.Random(seed)'s state: the same indices, in bulk
    for seed, n in [(hb_stats.BOOTSTRAP_SEED, 100_000), (0, 1), (7, 3), (2**40 + 3, 12_345)]:
        rng = random.Random(seed)
        expected = [i for _ in range(3) for i in rng.choices(range(n), k=n)]
        got = hb_bootstrap.choices_indices(hb_bootstrap.python_random_generator(seed), n, 3 * n)
        assert got.tolist() == expected


@pytest.mark.parametrize("case", range(6))
def test_vectorised_bootstrap_equals_the_pure_python_one(case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(100 + case)
    n = [1, 2, 9, 57, 400, 2_000][case]
    if case % 2:  # several blocks of resamples, the last one partial
        monkeypatch.setattr(hb_bootstrap, "BLOCK_CELLS", 7 * n)
    rows = []
    for _ in range(n):
        ref_len = rng.choice([0, 0, 1, 5, 30])  # zero denominators included
        rows.append(
            {
                "char_edits": rng.randint(0, 2 * ref_len + 1) if ref_len or rng.random() < 0.5 else 0,
                "char_ref_len": ref_len,
                "cer": round(rng.random() * 1.5, 6),
                "anls": rng.choice([0.0, 0.5, round(rng.uniform(0.5, 1), 6), 1.0]),
                "exact_match": float(rng.random() < 0.4),
            }
        )
    names = ["cer", "cer_mean", "anls", "exact_match"]
    columns = {m: c for m in names if (c := hb_stats.columns_for(m, rows)) is not None}
    assert set(columns) == set(names)
    reference_columns = {
        m: (kind, cols[0], cols[1] if len(cols) > 1 else []) for m, (kind, cols) in columns.items()
    }
    resamples, seed = 300 + 37 * case, rng.randint(0, 2**32)
    expected = _reference_bootstrap_ci(n, reference_columns, resamples, seed)
    got = hb_bootstrap.bootstrap_ci(n, columns, resamples, seed)
    assert set(got) == set(expected)
    for m in names:
        assert got[m] == pytest.approx(expected[m], abs=1e-6, rel=0), m
        assert [round(x, 6) for x in got[m]] == [round(x, 6) for x in expected[m]], m
    # hb_stats.bootstrap_ci (the stdlib definition, closures) gives the same
    stats = {m: hb_stats.statistic_of(c) for m, c in columns.items()}
    stdlib = hb_stats.bootstrap_ci(n, stats, resamples, seed)
    for m in names:
        assert got[m] == pytest.approx(stdlib[m], abs=1e-12, rel=0), m
    assert all(math.isnan(x) for x in hb_bootstrap.bootstrap_ci(0, columns, 10, 1)["cer"])


# ============================================================================ evaluate() on the host


def _write_dataset(root: Path, task: str, samples: list[dict[str, Any]], **extra: Any) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"name": "t", "version": "1", "task": task, **extra}))
    (data / "manifest.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return data


def _write_preds(root: Path, preds: list[dict[str, Any]]) -> Path:
    p = root / "predictions.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in preds))
    return p


def test_eval_ocr_policies(tmp_path: Path) -> None:
    data = _write_dataset(
        tmp_path,
        "ocr",
        [
            {"id": "a", "image": "a.png", "text": "abcd", "category": "print"},
            {"id": "b", "image": "b.png", "text": "xyz", "category": "hand"},
            {"id": "c", "image": "c.png", "text": "ok", "category": "hand"},
            {"id": "e", "image": "e.png", "text": "", "category": "blank"},
        ],
    )
    preds = _write_preds(
        tmp_path,
        [
            {"id": "a", "prediction": "abxd", "latency_ms": 10, "error": None},
            {"id": "b", "prediction": "xyz", "latency_ms": 5, "error": "CUDA OOM"},  # never good
            {"id": "e", "prediction": "", "latency_ms": 1, "error": None},  # blank page read as blank
        ],  # c is missing
    )
    doc = ev.evaluate(data, preds, tmp_path / "out", resamples=200)
    rows = {
        r["id"]: r for r in map(json.loads, (tmp_path / "out" / "per_sample.jsonl").read_text().splitlines())
    }
    assert doc["n"] == 4
    assert doc["errors"] == 2
    assert doc["missing"] == 1
    assert doc["metric_version"] == hm.METRIC_VERSION
    assert all(r["metric_version"] == hm.METRIC_VERSION for r in rows.values())
    assert doc["primary_metric"] == "cer"
    assert "cer" in doc["lower_is_better"]
    assert set(doc["metrics"]) == {"cer", "wer", "ned", "cer_mean", "wer_mean"}
    assert doc["normalization"]["unicode"].startswith("NFC")
    assert doc["policy"]["failed_or_missing"]
    # corpus chars: a 1/4, b 3/3 (as empty), c 2/2 (as empty), e 0/0 -> 6/9
    assert doc["metrics"]["cer"]["value"] == pytest.approx(round(6 / 9, 6))
    # per-sample: a .25, b 1 (worst), c 1 (worst), e 0 -> mean 0.5625
    assert doc["metrics"]["cer_mean"]["value"] == pytest.approx(0.5625)
    assert rows["b"]["cer"] == 1.0
    assert rows["b"]["error"] == "CUDA OOM"
    assert rows["b"]["prediction"] is None
    assert rows["c"]["missing"]
    assert rows["c"]["ned"] == 1.0
    assert rows["e"]["cer"] == 0.0
    for m in doc["metrics"].values():
        assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    assert doc["by_category"]["hand"] == {"n": 2, "errors": 2, "cer": 1.0}
    assert doc["bootstrap"] == {
        "resamples": 200,
        "seed": hb_stats.BOOTSTRAP_SEED,
        "method": hb_stats.BOOTSTRAP_METHOD,
    }


def test_eval_vqa_policies(tmp_path: Path) -> None:
    data = _write_dataset(
        tmp_path,
        "vqa",
        [
            {"id": "q1", "image": "x.png", "question": "?", "answers": ["42.50", "42.5"]},
            {"id": "q2", "image": "x.png", "question": "?", "answers": [""]},  # no usable answer
            {"id": "q3", "image": "x.png", "question": "?", "answers": ["abcd"]},
        ],
    )
    preds = _write_preds(
        tmp_path,
        [
            {"id": "q1", "prediction": "42.5", "latency_ms": 1, "error": None},
            {"id": "q2", "prediction": "", "latency_ms": 1, "error": None},
            {"id": "q3", "prediction": "abef", "latency_ms": 1, "error": None},
        ],
    )
    doc = ev.evaluate(data, preds, tmp_path / "out", resamples=100)
    assert doc["no_reference"] == 1
    assert doc["errors"] == 0
    # anls: q1 1, q2 0 (no reference), q3 exactly 0.5 kept -> 1.5 / 3
    assert doc["metrics"]["anls"]["value"] == pytest.approx(0.5)
    assert list(doc["metrics"]) == list(hm.VQA_METRICS)
    # dataset.json may narrow the metric set; the first is the primary
    data2 = _write_dataset(
        tmp_path / "narrow",
        "vqa",
        [{"id": "q1", "image": "x.png", "question": "?", "answers": ["1,000"]}],
        metrics=["relaxed_accuracy", "anls"],
    )
    doc2 = ev.evaluate(
        data2, _write_preds(tmp_path / "narrow", [{"id": "q1", "prediction": "1000"}]), tmp_path / "o2"
    )
    assert list(doc2["metrics"]) == ["relaxed_accuracy", "anls"]
    assert doc2["primary_metric"] == "relaxed_accuracy"
    assert doc2["metrics"]["relaxed_accuracy"]["value"] == 1.0


def test_eval_refuses_unknown_metric(tmp_path: Path) -> None:
    data = _write_dataset(tmp_path, "ocr", [{"id": "a", "image": "a.png", "text": "x"}], metrics=["anls"])
    with pytest.raises(ValueError, match="not ocr metrics"):
        ev.evaluate(data, _write_preds(tmp_path, []), tmp_path / "out")


def test_the_web_side_ranks_with_the_eval_images_metric_names_and_directions() -> None:
    # worker/contract.py is the web side's single definition; the eval image keeps its own copy
    # (it may import nothing of ours): the two must not drift apart.
    from worker import contract

    assert contract.TASK_METRICS == ev.TASK_METRICS
    assert {"ocr": hm.OCR_METRICS, "vqa": hm.VQA_METRICS}.items() <= ev.TASK_METRICS.items()
    assert {t: contract.TASK_METRICS[t][0] for t in hm.PRIMARY} == hm.PRIMARY
    assert contract.LOWER_IS_BETTER == hb_stats.LOWER_IS_BETTER
    assert set(hb_stats.AGGREGATES) == {m for names in ev.TASK_METRICS.values() for m in names}


# ============================================================================ the real image, by hand


@pytest.mark.docker
def test_eval_image_by_hand_on_a_tiny_vqa_dataset(tmp_path: Path) -> None:
    assert shutil.which("docker"), "docker CLI not found: run scripts/ensure-docker.sh"
    r = subprocess.run(["docker", "image", "inspect", EVAL_IMAGE], capture_output=True, timeout=60)
    assert r.returncode == 0, f"image {EVAL_IMAGE} missing: run scripts/build-images.sh eval"
    tmp_path.chmod(0o755)
    data = _write_dataset(
        tmp_path,
        "vqa",
        [
            {"id": "q1", "image": "x.png", "question": "total?", "answers": ["42.50", "42.5"]},
            {"id": "q2", "image": "x.png", "question": "name?", "answers": ["ACME Corp"]},
            {"id": "q3", "image": "x.png", "question": "share?", "answers": ["45%"]},
            {"id": "q4", "image": "x.png", "question": "count?", "answers": ["3"] * 10},
        ],
    )
    preds = _write_preds(
        tmp_path,
        [
            {"id": "q1", "prediction": "42.5", "latency_ms": 12.0, "error": None},
            {"id": "q2", "prediction": "acme corp.", "latency_ms": 15.0, "error": None},
            {"id": "q3", "prediction": "0.46", "latency_ms": 9.0, "error": None},
            {"id": "q4", "prediction": None, "latency_ms": 3.0, "error": "image unreadable"},
        ],
    )
    for p in [data, *data.iterdir(), preds]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    name = f"hb-test-{uuid.uuid4().hex[:10]}"
    cmd = [
        "docker", "run", "--rm", "--name", name, "--network", "none", "--label", "io.hyperbench.test=1",
        "-v", f"{data}:/data:ro", "-v", f"{preds}:/job/predictions.jsonl:ro", "-v", f"{out}:/job/output",
        EVAL_IMAGE,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["metric_version"] == hm.METRIC_VERSION == "2.1"
    assert m["task"] == "vqa"
    assert m["n"] == 4
    assert m["errors"] == 1
    assert set(m["metrics"]) == set(hm.VQA_METRICS)
    # anls: q1 1, q2 0.9, q3 "0.46" vs "45%": NL = 4/4 (distance 4 over max(3, 4)) -> 0, q4 error 0
    assert m["metrics"]["anls"]["value"] == pytest.approx(round(1.9 / 4, 6))
    # relaxed: q1 1, q2 "acme corp." != "acme corp" -> 0, q3 0.46 vs 0.45 = 2.2 % -> 1, q4 0
    assert m["metrics"]["relaxed_accuracy"]["value"] == 0.5
    # exact: q1 only. vqa_accuracy (vqaEval.py): q1 "42.5" vs ["42.50", "42.5"] -> 1/6 (see
    # test_vqa_answer_processing_is_the_official_one); q2 has one answer -> 0 by definition;
    # q3 no match; q4 error -> (1/6) / 4 = 1/24
    assert m["metrics"]["exact_match"]["value"] == 0.25
    assert m["metrics"]["vqa_accuracy"]["value"] == pytest.approx(1 / 24, abs=1e-6)
    for v in m["metrics"].values():
        assert v["ci95"][0] <= v["value"] <= v["ci95"][1]
    assert isinstance(m["normalization"], dict)
    assert isinstance(m["policy"], dict)
    rows = [json.loads(line) for line in (out / "per_sample.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2", "q3", "q4"]
    assert rows[3]["error"] == "image unreadable"
    assert rows[3]["anls"] == 0.0
