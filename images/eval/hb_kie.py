"""Key information extraction: field F1 and nTED accuracy exactly as Donut's JSONParseEvaluator.

Source: clovaai/donut, ``donut/util.py`` at commit 4cfcf97 (MIT), class
``JSONParseEvaluator`` (``normalize_dict``, ``flatten``, ``cal_f1``, ``cal_acc``,
``update_cost``, ``insert_and_remove_cost``, ``construct_tree_from_dict``): the convention
CORD / SROIE results are reported in. ``tests/vendor/donut_json_parse_evaluator.py`` holds the
class; ``tests/test_metrics_table_kie_page.py`` checks this module against it to 1e-9.

- ``field_f1``: both objects normalized (:func:`normalize_dict`) and flattened to
  (dotted key, value) pairs (:func:`flatten`, list items share their parent's key); a predicted
  pair present among the ground-truth pairs is a true positive and removes ONE copy of it,
  otherwise a false positive; what is left of the ground truth is false negatives. Corpus
  F1 = TP / (TP + (FP + FN) / 2), counts summed over the corpus (micro-average, ``cal_f1``).
- ``nted_accuracy``: per sample max(0, 1 - TED(pred, gt) / TED(empty, gt)) with the zss
  Zhang-Shasha tree edit distance and Donut's costs (a leaf: Levenshtein of the values, or
  1 + length against an inner node; insert/delete a leaf: its length; inner nodes: 1), averaged
  over samples.

nltk's ``edit_distance`` (the official dependency, unit costs, no transpositions) is replaced
by rapidfuzz's ``Levenshtein.distance``: the same distance.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import zss
from hb_kie_fields import f1_from_counts, field_counts, flatten, normalize_dict
from rapidfuzz.distance import Levenshtein

METRIC_VERSION = "1.0"
KIE_METRICS = ("field_f1", "nted_accuracy")

NORMALIZATION: dict[str, str] = {
    "field_f1": "Donut JSONParseEvaluator.cal_f1 (clovaai/donut 4cfcf97, donut/util.py), micro-averaged over "
    "the corpus: both objects go through normalize_dict (keys sorted by (length, key); scalars become "
    "[str(v).strip()]; empty strings, empty lists and objects, null, 0, false and 0.0 dropped, as the "
    "official `if not data` does; a list of scalars keeps str/int/float items only; nested objects become "
    "one-item lists) and flatten (pairs (dotted key path, value); list items share the key); a predicted "
    "pair present among the remaining ground-truth pairs is a TP and consumes one copy, else a FP; the "
    "ground-truth pairs left over are FN; F1 = TP / (TP + (FP + FN) / 2) over the summed counts; values "
    "compared as exact strings after the strip (no case folding)",
    "nted_accuracy": "Donut JSONParseEvaluator.cal_acc: max(0, 1 - zss TED(pred tree, gt tree) / zss TED("
    "empty tree, gt tree)) on the normalized objects (inner nodes: keys, <subtree> for list items of "
    "objects; leaves: the values); update: Levenshtein of two leaf values, 1 + value length between a "
    "leaf and an inner node, else 0/1 on label equality; insert/delete: a leaf's value length, 1 for an "
    "inner node; mean over samples",
    "per_field": "per flattened key (e.g. menu.nm): TP/FP/FN counted as above; precision = TP/(TP+FP), "
    "recall = TP/(TP+FN), f1 = TP/(TP+(FP+FN)/2) (null when its denominator is 0)",
    "prediction_parsing": "the prediction is JSON text: the content of the first ``` fenced block (any "
    "language tag, e.g. ```json) when there is one, else the whole text; when json.loads fails, the "
    "span from the first '{' to the last '}' is tried; the result must be a JSON object. Otherwise the "
    "prediction is the empty object {} and counts in `unparsable`",
}

POLICY: dict[str, str] = {
    "kie_failed_or_missing": "a failed or missing prediction is the empty object: every ground-truth "
    "field is a false negative; nted_accuracy = 0",
    "kie_unparsable": "a prediction that is not a JSON object is scored as the empty object and counted in "
    "unparsable (it is not an error)",
    "kie_without_reference": "a sample whose fields normalize to nothing counts in no_reference: its "
    "predicted fields are false positives and its nted_accuracy is 0 (Donut would divide by zero)",
    "kie_empty_corpus": "field_f1 is 0 when the corpus has no field at all (Donut would divide by zero)",
}

_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


# ----------------------------------------------------------------------------- Donut's definitions


def _leaf(label: str) -> bool:
    return "<leaf>" in label


def _update_cost(node1: zss.Node, node2: zss.Node) -> int:
    label1, label2 = node1.label, node2.label
    if _leaf(label1) and _leaf(label2):
        return int(Levenshtein.distance(label1.replace("<leaf>", ""), label2.replace("<leaf>", "")))
    if _leaf(label2):
        return 1 + len(label2.replace("<leaf>", ""))
    if _leaf(label1):
        return 1 + len(label1.replace("<leaf>", ""))
    return int(label1 != label2)


def _insert_remove_cost(node: zss.Node) -> int:
    label = node.label
    return len(label.replace("<leaf>", "")) if _leaf(label) else 1


def _tree(data: Any, node_name: str = "<root>") -> zss.Node:
    """Donut's ``construct_tree_from_dict``."""
    node = zss.Node(node_name)
    if isinstance(data, dict):
        for key, value in data.items():
            node.addkid(_tree(value, key))
    elif isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            for item in data:
                node.addkid(_tree(item, "<subtree>"))
        else:
            for item in data:
                node.addkid(zss.Node(f"<leaf>{item}"))
    else:
        raise ValueError(f"cannot build a tree from {data!r} at {node_name!r}")
    return node


def _ted(a: zss.Node, b: zss.Node) -> float:
    return float(
        zss.distance(
            a,
            b,
            get_children=zss.Node.get_children,
            insert_cost=_insert_remove_cost,
            remove_cost=_insert_remove_cost,
            update_cost=_update_cost,
            return_operations=False,
        )
    )


def nted_accuracy(pred: Any, answer: Any) -> float:
    """``cal_acc``: max(0, 1 - TED(pred, gt) / TED(empty, gt)); 0 when the ground truth is empty."""
    answer_tree = _tree(normalize_dict(answer))
    norm = _ted(_tree(normalize_dict({})), answer_tree)
    if norm == 0:
        return 0.0
    return max(0.0, 1.0 - _ted(_tree(normalize_dict(pred)), answer_tree) / norm)


# ----------------------------------------------------------------------------- prediction parsing


def parse_prediction(text: str) -> tuple[dict[str, Any], bool]:
    """The predicted object and whether the text was a JSON object (rule: NORMALIZATION)."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    candidates = [body]
    start, end = body.find("{"), body.rfind("}")
    if 0 <= start < end:
        candidates.append(body[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            return value, True
    return {}, False


# ----------------------------------------------------------------------------- per sample, summary


def reference_fields(sample: Mapping[str, Any]) -> dict[str, Any]:
    value = sample.get("fields")
    return value if isinstance(value, dict) else {}


def score_sample(sample: dict[str, Any], prediction: str | None) -> tuple[dict[str, Any], bool]:
    """A kie sample's per-sample fields (prediction None: failed or missing); has it a reference?"""
    answer = reference_fields(sample)
    parsable = True
    pred: dict[str, Any] = {}
    if prediction is not None:
        pred, parsable = parse_prediction(prediction)
    tp, fp, fn, per_key = field_counts(pred, answer)
    has_reference = bool(normalize_dict(answer))
    acc = nted_accuracy(pred, answer) if prediction is not None else 0.0
    fields = {
        "reference": json.dumps(answer, ensure_ascii=False, sort_keys=True),
        "ref_chars": len(flatten(normalize_dict(answer))),
        "parsed": pred,
        "unparsable": not parsable,
        "field_tp": tp,
        "field_fp": fp,
        "field_fn": fn,
        "f1_den": tp + (fp + fn) / 2,
        "field_f1_sample": round(f1_from_counts(tp, fp, fn), 6),
        "nted_accuracy": round(acc, 6),
        "field_counts": {k: {"tp": c[0], "fp": c[1], "fn": c[2]} for k, c in sorted(per_key.items())},
    }
    return fields, has_reference


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 6) if den > 0 else None


def summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """metrics.json additions: unparsable count, corpus counts and per-field precision/recall/F1."""
    totals: Counter[str] = Counter()
    per_key: dict[str, Counter[str]] = {}
    unparsable = 0
    for row in rows:
        unparsable += bool(row.get("unparsable"))
        totals.update({"tp": int(row.get("field_tp", 0)), "fp": int(row.get("field_fp", 0))})
        totals.update({"fn": int(row.get("field_fn", 0))})
        for key, c in (row.get("field_counts") or {}).items():
            per_key.setdefault(key, Counter()).update(c)
    fields = {}
    for key, c in sorted(per_key.items()):
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        fields[key] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "support": tp + fn,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": round(f1_from_counts(tp, fp, fn), 6) if tp + fp + fn else None,
        }
    return {
        "unparsable": unparsable,
        "field_counts": {"tp": totals["tp"], "fp": totals["fp"], "fn": totals["fn"]},
        "per_field": fields,
    }
