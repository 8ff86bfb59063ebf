"""Every anomaly class has a look of its own, and the later classes stay apart for colour-blind readers."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from reports import charts
from reports.style import CLASS_LOOKS, _FALLBACK_CLASS, class_look
from sim.results import BUYER_EXPERIENCE
from sim.vocabulary import ANOMALY_CLASSES

NEWER = ("amount_mismatch", "over_refund", "refund_to_wrong_party", "duplicate_fulfilment", "oversold",
         "bnpl_double_deduction", "refunded_and_shipped")

# Machado, Oliveira & Fernandes (2009), severity 1.0, on linear RGB.
CVD = {
    "normal": np.eye(3),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}


def _lab(hex_color: str, vision: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour as a viewer with ``vision`` sees it."""
    rgb = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    lin = np.clip(vision @ lin, 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_class_of_the_vocabulary_has_a_look_and_nothing_else_does():
    assert set(CLASS_LOOKS) == set(ANOMALY_CLASSES)
    for cls in ANOMALY_CLASSES:
        assert class_look(cls) is CLASS_LOOKS[cls] and class_look(cls) != _FALLBACK_CLASS


def test_looks_are_distinct():
    looks = [CLASS_LOOKS[c] for c in ANOMALY_CLASSES]
    colours = [look.color.upper() for look in looks]
    assert all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in colours)
    assert len(set(colours)) == len(colours)
    assert _FALLBACK_CLASS.color.upper() not in colours
    assert len({(look.marker, str(look.linestyle)) for look in looks}) == len(looks)
    assert len({look.hatch for look in looks}) == len(looks)


@pytest.mark.parametrize("vision", list(CVD))
def test_newer_classes_are_far_from_every_other_class_in_colour(vision):
    """ΔE (CIE76) ≥ 10 between each of the six later classes and every other class, also as a viewer with
    deuteranopia, protanopia or tritanopia sees them (the older eleven keep their published colours)."""
    m = CVD[vision]
    for new, other in itertools.product(NEWER, ANOMALY_CLASSES):
        if new == other:
            continue
        d = float(np.linalg.norm(_lab(CLASS_LOOKS[new].color, m) - _lab(CLASS_LOOKS[other].color, m)))
        assert d >= 10.0, f"{new} vs {other} under {vision}: ΔE {d:.1f}"


def test_every_class_has_words_for_the_summary_and_the_story():
    for cls in ANOMALY_CLASSES:
        assert cls in BUYER_EXPERIENCE
        assert cls in charts._DISAGREEMENT
        assert cls in charts._KEY_EVENTS or cls in ("stuck_pending", "bnpl_stuck_unfinished")
