"""The project owns its sources: docs/domain.md holds the payment facts, and everything cites it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ROOT / "docs" / "domain.md"


def _headings() -> list[str]:
    return [line[3:].strip() for line in DOMAIN.read_text(encoding="utf-8").splitlines() if line.startswith("## ")]


def test_no_project_file_points_outside_the_project():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".html", ".cfg"} or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if "../shared" in line and name != "tests/test_domain_doc.py":
                offenders.append(f"{name}:{n}")
    assert not offenders, f"cite docs/domain.md instead of ../shared: {offenders}"


def test_domain_doc_covers_the_facts_with_public_sources():
    headings = _headings()
    for section in ("Notifications", "Order expiry and closing", "Unknown results and active queries", "Refunds",
                    "Reconciliation (对账)", "Buy now, pay later", "Idempotency", "Load and failure figures",
                    "Field reports"):
        assert section in headings
    text = DOMAIN.read_text(encoding="utf-8")
    assert len(re.findall(r"<https://[^>]+>", text)) >= 8
    # the named retry schedules in the code are the ones written here
    from sim.domain.schedules import NOTIFY_SCHEDULES

    assert NOTIFY_SCHEDULES["alipay"] == (240.0, 600.0, 600.0, 3600.0, 7200.0, 21600.0, 54000.0)
    assert "4m, 10m, 10m, 1h, 2h, 6h, 15h" in text
    assert "15s, 15s, 30s, 3m, 10m, 20m" in text


def test_every_cited_section_exists():
    headings = _headings()
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        text = re.sub(r"\s*\n#\s*", " ", path.read_text(encoding="utf-8"))  # comment lines joined
        for cited in re.findall(r'docs/domain\.md\s*\(?"([^"]+)"', text):
            assert any(h.startswith(cited) for h in headings), f"{path.name} cites a section {cited!r} docs/domain.md lacks"
