"""A chart written to disk, as the renderer and the HTML page both know it (kept apart from both so
that neither imports the other for it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Chart:
    """One chart written to disk, and where it belongs in the report."""

    kind: str  # "rates" | "sweep_rates" | "timeline" | "windows" | "story" | "predicted_vs_measured"
    title: str
    caption: str
    png: Path
    svg: Path
    doc: int | None  # index of the document it belongs to; None when it compares documents


def slug(text: str) -> str:
    """A file-name-safe form of a title: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "results"
