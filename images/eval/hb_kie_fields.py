"""Donut's field matching for KIE (clovaai/donut 4cfcf97, ``donut/util.py``, ``JSONParseEvaluator``):
``normalize_dict``, ``flatten`` and ``cal_f1``'s counting, for hb_kie's ``field_f1``.

Standard library only: the report image ships this same file beside hb_stats, so the gallery's
field table marks exactly the pairs the score counted as false positives and negatives.
"""

from __future__ import annotations

from typing import Any

Pair = tuple[str, Any]


def normalize_dict(data: Any) -> Any:
    """Donut's ``JSONParseEvaluator.normalize_dict``: sort keys, values to lists of stripped strings."""
    if not data:
        return {}
    new_data: Any
    if isinstance(data, dict):
        new_data = {}
        for key in sorted(data.keys(), key=lambda k: (len(k), k)):
            value = normalize_dict(data[key])
            if value:
                if not isinstance(value, list):
                    value = [value]
                new_data[key] = value
    elif isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            new_data = []
            for item in data:
                item = normalize_dict(item)
                if item:
                    new_data.append(item)
        else:
            new_data = [
                str(item).strip() for item in data if type(item) in {str, int, float} and str(item).strip()
            ]
    else:
        new_data = [str(data).strip()]
    return new_data


def flatten(data: Any) -> list[tuple[str, Any]]:
    """Donut's ``JSONParseEvaluator.flatten``: (dotted key, value) pairs; list items share their key."""
    out: list[tuple[str, Any]] = []

    def _flatten(value: Any, key: str = "") -> None:
        if type(value) is dict:
            for child_key, child_value in value.items():
                _flatten(child_value, f"{key}.{child_key}" if key else child_key)
        elif type(value) is list:
            for item in value:
                _flatten(item, key)
        else:
            out.append((key, value))

    _flatten(data)
    return out


def match_fields(pred: Any, answer: Any) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """``cal_f1``'s matching of one sample: (true positives, false positives, false negatives) as pairs.

    The predicted pairs are taken in order; one present among the ground-truth pairs not yet
    consumed is a true positive and consumes ONE copy, else a false positive; the ground-truth
    pairs left over are the false negatives.
    """
    pred_pairs = flatten(normalize_dict(pred))
    remaining = flatten(normalize_dict(answer))
    tps: list[Pair] = []
    fps: list[Pair] = []
    for pair in pred_pairs:
        if pair in remaining:
            tps.append(pair)
            remaining.remove(pair)
        else:
            fps.append(pair)
    return tps, fps, remaining


def field_counts(pred: Any, answer: Any) -> tuple[int, int, int, dict[str, list[int]]]:
    """TP, FP, FN of one sample as ``cal_f1`` counts them (:func:`match_fields`), and per flattened key."""
    tps, fps, fns = match_fields(pred, answer)
    per_key: dict[str, list[int]] = {}
    for pair in tps:
        per_key.setdefault(str(pair[0]), [0, 0, 0])[0] += 1
    for pair in fps:
        per_key.setdefault(str(pair[0]), [0, 0, 0])[1] += 1
    for pair in fns:
        per_key.setdefault(str(pair[0]), [0, 0, 0])[2] += 1
    return len(tps), len(fps), len(fns), per_key


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """``cal_f1``'s formula; 0 when there is nothing to count."""
    den = tp + (fp + fn) / 2
    return tp / den if den > 0 else 0.0
