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


def test_api_reference_is_current_and_documents_every_public_name():
    import ajuste
    from ajuste.docs.api_reference import render

    page = (ROOT / "docs" / "api.md").read_text()
    assert page == render(), "docs/api.md is stale: python -m ajuste.docs.api_reference > docs/api.md"
    assert "(no docstring)" not in page
    for name in ajuste.__all__:
        assert f"ajuste.{name}" in page, name
