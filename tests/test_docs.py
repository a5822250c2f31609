"""Generated reference pages are current: a changed config field must come with its docs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    from ajuste.config import describe_fields, RunConfig
    from ajuste.docs.config_reference import render

    page = (ROOT / "docs" / "config.md").read_text()
    assert page == render(), "docs/config.md is stale: python -m ajuste.docs.config_reference > docs/config.md"
    for name, _, _ in describe_fields(RunConfig):  # every field documented
        assert f"`{name}`" in page
