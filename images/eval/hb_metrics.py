"""HyperBench metric definitions (metric_version below). Pure functions, no I/O.

The eval image runs this file; tests/test_metrics.py imports it from the host.
Each function says which published definition it follows; where we had to
choose (empty strings, thousands separators) the choice is written here and
in POLICY / NORMALIZATION, which metrics.json carries. Change any rule only
together with METRIC_VERSION (2.1: vqa_accuracy follows vqaEval.py exactly).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

METRIC_VERSION = "2.1"
ANLS_THRESHOLD = 0.5
RELAXED_TOLERANCE = 0.05
OCRBENCH_MATH_DATASET = "HME100k"
OCRBENCH_MATH_TYPE = "Handwritten Mathematical Expression Recognition"

OCR_METRICS = ("cer", "wer", "ned", "cer_mean", "wer_mean")
VQA_METRICS = ("anls", "exact_match", "vqa_accuracy", "relaxed_accuracy", "ocrbench")
PRIMARY = {"ocr": "cer", "vqa": "anls"}

NORMALIZATION: dict[str, dict[str, str]] = {
    "ocr": {
        "unicode": "NFC (canonical composition: 'e' + U+0301 equals U+00E9); NOT NFKC, so compatibility "
        "characters such as the ligature U+FB01 or full-width digits stay distinct from their ASCII forms",
        "whitespace": "every run of Unicode whitespace (spaces, tabs, newlines) becomes one space; "
        "leading and trailing whitespace removed (line breaks cost nothing)",
        "case": "kept (case-sensitive)",
        "punctuation": "kept",
        "cer": "jiwer 4 process_characters on the normalized strings: corpus CER = total character "
        "edits (S+D+I) / total reference characters (S+D+H) summed over all samples; spaces count",
        "wer": "jiwer 4 process_words: corpus WER = total word edits / total reference words",
        "cer_mean / wer_mean": "mean over samples of the per-sample CER / WER",
        "ned": "per sample Levenshtein(ref, pred) / max(len(ref), len(pred)) (0 when both are empty; "
        "never above 1), averaged over samples (per page)",
    },
    "vqa": {
        "anls": "official DocVQA / RRC script (infographicsvqa_eval.py, as in lmms-eval and VLMEvalKit): "
        "distance between ' '.join(s.strip().lower().split()) of answer and prediction, divided by "
        "max(len(answer.upper()), len(prediction.upper())) of the RAW strings; NL = 0 when that length "
        "is 0; score = 1 - min NL over answers, set to 0 when below 0.5 (a score of exactly 0.5 is "
        "kept); mean over questions. No Unicode normalization (the script has none).",
        "exact_match": "NFKC, lower-case, whitespace runs collapsed to one space, stripped; 1 when the "
        "normalized prediction equals any normalized answer",
        "vqa_accuracy": "official VQA v2 eval (GT-Vision-Lab vqaEval.py), quirks included: the "
        "prediction gets newline/tab to space, strip, processPunctuation (its punctuation rule, the "
        "comma-between-digits and period quirks) and processDigitArticle (lower-case, number words to "
        "digits, articles removed, contractions restored); the answers are compared as stored, except "
        "that when they are not all identical each gets processPunctuation alone (no lower-casing, no "
        "number words, no articles: the eval expects answers normalized like the VQA v2 annotations); "
        "score = mean over the N answers of min(1, matches among the other N-1 answers / 3), for every "
        "N (1 answer: always 0; 3 matching answers: 2/3)",
        "relaxed_accuracy": "ChartQA relaxed correctness (pix2struct metrics.py): both strings parsed "
        "as float ('%' suffix divides by 100); when both parse and the answer is non-zero, correct iff "
        "|pred - ans| / |ans| <= 0.05; otherwise case-insensitive string equality. Extensions: "
        "surrounding whitespace stripped, thousands separators accepted ('1,234.5'); max over answers",
        "ocrbench": "OCRBench v1 (eval script of the OCRBench repo): 1 when any answer, lower-cased, "
        "stripped, newlines to spaces, is a substring of the prediction treated alike; for handwritten "
        "math (sample dataset_name 'HME100k' or type/category 'Handwritten Mathematical Expression "
        "Recognition') case is kept and all spaces are removed from both. Empty answers are ignored "
        "(the script would count '' as a substring of anything)",
    },
}

POLICY = {
    "failed_or_missing": "a sample with no prediction line, or whose line has error set, is counted in "
    "errors (missing counts the first kind alone) and is never dropped: it enters the corpus counts as "
    "the empty prediction (every reference character/word deleted) and its per-sample scores are set "
    "to the worst value (cer = wer = ned = 1; anls = exact_match = vqa_accuracy = relaxed_accuracy = "
    "ocrbench = 0)",
    "empty_prediction": "an empty prediction that is not an error is scored as it is: against a "
    "non-empty reference it costs every reference unit (CER = WER = NED = 1, ANLS = 0), so it is never "
    "a perfect score",
    "empty_reference": "an empty OCR reference with an empty prediction scores 0 (nothing to read, "
    "nothing read); with a non-empty prediction every predicted character is an insertion: per-sample "
    "CER/WER = insertions / max(reference length, 1) (jiwer's rule), NED = 1",
    "vqa_without_answers": "a VQA sample whose answers are missing or all empty counts in "
    "no_reference and scores 0 on every metric",
}


# ----------------------------------------------------------------------------- OCR


def normalize_ocr(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass(frozen=True)
class OcrScore:
    char_edits: int
    char_ref_len: int
    word_edits: int
    word_ref_len: int
    cer: float
    wer: float
    ned: float


def ocr_score(reference: str, prediction: str) -> OcrScore:
    """Per-sample OCR counts and scores on normalized strings (see NORMALIZATION['ocr']).

    The counts are jiwer 4's process_characters / process_words ones, computed without
    jiwer's per-call overhead: jiwer aligns with rapidfuzz's Levenshtein opcodes, whose
    S + D + I is the Levenshtein distance and S + D + H the reference length; on
    normalized strings its transforms (strip, collapse spaces, split on " ") change
    nothing, and words are compared as ids, as jiwer does (tests/test_metrics.py checks
    the counts against jiwer's on random strings).
    """
    ref = normalize_ocr(reference)
    hyp = normalize_ocr(prediction)
    ce = Levenshtein.distance(ref, hyp)
    cu = len(ref)
    word_ids: dict[str, int] = {}
    ref_words = [word_ids.setdefault(w, len(word_ids)) for w in ref.split(" ") if w]
    hyp_words = [word_ids.setdefault(w, len(word_ids)) for w in hyp.split(" ") if w]
    we = Levenshtein.distance(ref_words, hyp_words)
    wu = len(ref_words)
    longest = max(cu, len(hyp))
    return OcrScore(
        char_edits=ce,
        char_ref_len=cu,
        word_edits=we,
        word_ref_len=wu,
        cer=ce / max(cu, 1),
        wer=we / max(wu, 1),
        ned=min(1.0, ce / longest) if longest else 0.0,  # = ned(ref, hyp)
    )


def ned(reference: str, prediction: str) -> float:
    """Levenshtein / max(len); 0 for two empty strings; in [0, 1] by construction."""
    longest = max(len(reference), len(prediction))
    if longest == 0:
        return 0.0
    return min(1.0, Levenshtein.distance(reference, prediction) / longest)


def corpus_rate(edits: Sequence[int], ref_units: Sequence[int]) -> float:
    """Total edits / total reference units (jiwer's corpus CER/WER); a zero total divides by 1."""
    total = sum(ref_units)
    return sum(edits) / total if total > 0 else float(sum(edits))


# ----------------------------------------------------------------------------- ANLS


def _anls_collapse(s: str) -> str:
    return " ".join(s.strip().lower().split())


def anls_nl(answer: str, prediction: str) -> float:
    """Normalized Levenshtein distance exactly as the official DocVQA/RRC script computes it."""
    dist = Levenshtein.distance(_anls_collapse(answer), _anls_collapse(prediction))
    length = max(len(answer.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else dist / length


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """Per-question ANLS: 1 - min NL over answers, 0 when below the threshold (0.5 itself is kept)."""
    if not answers:
        return 0.0
    result = 1.0 - min(anls_nl(str(a), prediction) for a in answers)
    return 0.0 if result < threshold else result


# ----------------------------------------------------------------------------- exact match


def normalize_em(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = normalize_em(prediction)
    return 1.0 if any(p == normalize_em(str(a)) for a in answers) else 0.0


# ----------------------------------------------------------------------------- VQA accuracy

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = [
    ";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
]  # fmt: skip
# Both regexes are the official ones, quirks included: "(?!<=\d)" is a negative
# look-AHEAD for the text "<=" + digit (the authors meant a look-behind), so a
# period is removed unless a digit follows it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _vqa_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or (_COMMA_STRIP.search(text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official call passes re.UNICODE (32) as the `count` argument: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, 32)


def _vqa_digit_article(text: str) -> str:
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """The processing vqaEval.py gives the PREDICTION: newline/tab to space, strip, then
    processPunctuation and processDigitArticle. (Ground-truth answers get less: see vqa_accuracy.)"""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digit_article(_vqa_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy exactly as the official VQA v2 eval (GT-Vision-Lab vqaEval.py) computes it.

    The prediction always gets :func:`normalize_vqa_answer`. The answers are taken as
    stored; only when they are not all identical does each get processPunctuation (no
    strip, no lower-casing, no number words or articles): the official eval relies on
    annotations whose answers were normalized when the data set was made. Then for
    each answer i, acc_i = min(1, #{j != i : answer_j == prediction} / 3), and the
    score is the mean of acc_i over the N answers, whatever N is: with 1 answer the
    score is always 0, with 3 identical matching answers 2/3. The official code drops
    answer i by comparing answer dicts, which carry a unique answer_id: one answer is
    left out per subset, even among duplicates, as the index here does.
    """
    gts = [str(a) for a in answers]
    if not gts:
        return 0.0  # the official eval would divide by zero; see POLICY["vqa_without_answers"]
    pred = normalize_vqa_answer(prediction)
    if len(set(gts)) > 1:
        gts = [_vqa_punctuation(a) for a in gts]
    accs = [min(1.0, sum(1 for j, g in enumerate(gts) if j != i and g == pred) / 3) for i in range(len(gts))]
    return sum(accs) / len(accs)


# ----------------------------------------------------------------------------- relaxed accuracy

_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?%?$")


def parse_number(text: str) -> float | None:
    """pix2struct's _to_float, plus whitespace stripping and thousands separators."""
    t = text.strip()
    if _THOUSANDS.match(t):
        t = t.replace(",", "")
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def relaxed_correctness(answer: str, prediction: str, tolerance: float = RELAXED_TOLERANCE) -> bool:
    pred_f = parse_number(prediction)
    ans_f = parse_number(answer)
    if pred_f is not None and ans_f:  # a zero answer falls through to string equality, as in pix2struct
        return abs(pred_f - ans_f) / abs(ans_f) <= tolerance
    return prediction.strip().lower() == answer.strip().lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str]) -> float:
    return 1.0 if any(relaxed_correctness(str(a), prediction) for a in answers) else 0.0


# ----------------------------------------------------------------------------- OCRBench


def is_handwritten_math(sample: Mapping[str, object]) -> bool:
    if sample.get("dataset_name") == OCRBENCH_MATH_DATASET:
        return True
    return any(sample.get(k) == OCRBENCH_MATH_TYPE for k in ("type", "category"))


def ocrbench(prediction: str, answers: Sequence[str], handwritten_math: bool = False) -> float:
    if handwritten_math:
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        norm = [str(a).strip().replace("\n", " ").replace(" ", "") for a in answers]
    else:
        pred = prediction.lower().strip().replace("\n", " ")
        norm = [str(a).lower().strip().replace("\n", " ") for a in answers]
    return 1.0 if any(a and a in pred for a in norm) else 0.0


# ----------------------------------------------------------------------------- VQA bundle


def vqa_scores(
    prediction: str, answers: Sequence[str], sample: Mapping[str, object] | None = None
) -> dict[str, float]:
    """Every VQA metric of one question (the caller handles failed predictions and answer-less samples)."""
    return {
        "anls": anls(prediction, answers),
        "exact_match": exact_match(prediction, answers),
        "vqa_accuracy": vqa_accuracy(prediction, answers),
        "relaxed_accuracy": relaxed_accuracy(prediction, answers),
        "ocrbench": ocrbench(prediction, answers, is_handwritten_math(sample or {})),
    }
