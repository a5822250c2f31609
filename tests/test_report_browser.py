"""The HTML reports open in a real browser (headless Chromium) as one self-contained file.

Checks, on a tiny compare study and a tiny tune run: no console error, every <img> decoded (naturalWidth > 0),
no request to anything but the file itself and data: URIs, the recommendation (or best trial) before any table or
plot, and no table wider than the page. A full-page screenshot is saved next to each report for a human look.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package; .ci/run installs it

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
TINY = ["model.pretrained=false", "data.image_size=32", "train.epochs=1", "strategy.head_epochs=1",
        "data.batch_size=64", "train.min_steps=0", "train.threads=1"]

# What the page does once loaded: the facts the assertions need, gathered in one round trip.
PAGE_FACTS = """() => ({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                          shown: i.getBoundingClientRect().width})),
  firstSections: [...document.querySelectorAll('h2, table, img')].slice(0, 3).map(e => e.tagName + ':' +
                                                                                   e.textContent.trim()),
  pageWidth: document.documentElement.scrollWidth, viewWidth: document.documentElement.clientWidth,
  wideTables: [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().right >
                                                             document.documentElement.clientWidth + 1).length,
})"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def open_report(browser, path: Path, screenshot: Path) -> dict:
    """Load `path` in a fresh page; return the page facts plus console errors and foreign requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def route(r):
        url = r.request.url
        if url.startswith("data:") or url == path.as_uri():
            r.continue_()
        else:  # block it, so a report that needs the network fails here and not only offline
            foreign.append(url)
            r.abort()

    page.route("**/*", route)  # every request the page makes passes here, http(s), file and data alike
    page.goto(path.as_uri(), wait_until="load")
    facts = page.evaluate(PAGE_FACTS)
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return {**facts, "errors": errors, "foreign": foreign}


def assert_self_contained(html: str) -> None:
    # No stylesheet, script, font or image that would be fetched: only inline <style> and data: URIs.
    assert "<script" not in html.lower() and "<link" not in html.lower()
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html):
        assert ref.startswith("data:image/png;base64,"), ref
    assert not re.search(r"url\(|@import|@font-face", html)


def assert_loads_cleanly(facts: dict, *, images: int, first_heading: str) -> None:
    assert facts["errors"] == []
    assert facts["foreign"] == []
    assert len(facts["images"]) == images
    for img in facts["images"]:
        assert img["complete"] and img["w"] > 0, f"image {img['alt']!r} did not decode"
        assert img["shown"] > 200, f"image {img['alt']!r} is drawn {img['shown']}px wide"
    assert facts["firstSections"][0] == f"H2:{first_heading}", facts["firstSections"]
    assert facts["pageWidth"] <= facts["viewWidth"] and facts["wideTables"] == 0


def test_the_browser_check_catches_a_broken_page(tmp_path, browser):
    # The harness itself: a page that fetches from the network, logs an error and has an undecodable image.
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><h2>x</h2><img alt='net' src='http://198.51.100.1/plot.png'>"
                   "<img alt='broken' src='data:image/png;base64,iVBORw0KGgo='>"
                   "<script>console.error('boom')</script></body></html>")
    facts = open_report(browser, bad, tmp_path / "bad.png")
    assert any("boom" in e for e in facts["errors"])
    assert facts["foreign"] == ["http://198.51.100.1/plot.png"]
    assert [i["w"] for i in facts["images"]] == [0, 0]


def test_compare_report_in_chromium(tmp_path, browser):
    from ajuste.report.html import build_report
    from ajuste.study.runner import run_study
    from ajuste.study.spec import StudySpec

    spec = StudySpec(source="digits", model="timm/test_efficientnet", strategies=["linear-probe", "scratch"],
                     fractions=[0.1, 0.3], seeds=1, sets=list(TINY))
    run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    advice = build_report(tmp_path, export=False)
    html = (tmp_path / "report.html").read_text()
    assert_self_contained(html)
    # The recommendation in plain words comes before any number table or plot.
    assert html.index(advice["text"].split(".")[0][:40]) < min(html.index("<table"), html.index("<img"))

    facts = open_report(browser, tmp_path / "report.html", tmp_path / "report.png")
    # data efficiency, accuracy vs time, confusion, learning curves at each of the 2 fractions, reliability diagram
    assert_loads_cleanly(facts, images=6, first_heading="Recommendation")
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_tune_report_in_chromium(tmp_path, browser):
    from ajuste.config import RunConfig
    from ajuste.search.runner import tune

    space = tmp_path / "space.yaml"
    space.write_text("extends: none\nparams:\n"
                     "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "  model.dropout: {type: float, low: 0.0, high: 0.5}\n")
    cfg = RunConfig().override({"data.source": "digits", "model.name": "timm/test_efficientnet",
                                "model.pretrained": False, "data.image_size": 32, "data.fraction": 0.2,
                                "strategy.name": "linear-probe", "train.epochs": 2, "train.threads": 1,
                                "train.min_steps": 0})
    res = tune(cfg=cfg, out=tmp_path / "t", trials=3, sampler="random", pruner="none", space=space)
    report = res.out / "report.html"
    html = report.read_text()
    assert_self_contained(html)
    # The answer in words (which trial's settings to use) before any table or plot.
    assert "Use the settings of trial #" in html[:min(html.index("<table"), html.index("<img"))]

    facts = open_report(browser, report, tmp_path / "report.png")
    # history, importances, parallel coordinates, learning curves: 3 complete trials draw all four
    assert_loads_cleanly(facts, images=4, first_heading="Best trial")
    assert (tmp_path / "report.png").stat().st_size > 20_000


def _display_points(ax):
    import numpy as np

    pts = [ax.transData.transform(np.column_stack(line.get_data())) for line in ax.get_lines() if len(line.get_xdata())]
    return np.vstack(pts) if pts else np.empty((0, 2))


def test_plots_are_readable():
    """What the screenshots showed wrong, kept fixed: a legend over the points, a clipped title, empty curves."""
    import matplotlib.pyplot as plt

    from ajuste.report import plots

    agg = [{"strategy": s, "fraction": f, "n_train": n, "test_score": a, "test_score_std": 0.0,
            "train_seconds": t} for s, f, n, a, t in [("full", 0.25, 976, 0.984, 47), ("full", 0.05, 195, 0.98, 48),
                                                     ("scratch", 0.25, 976, 0.52, 204),
                                                     ("scratch", 0.05, 195, 0.5, 222)]]
    for fig in (plots.data_efficiency(agg), plots.accuracy_vs_time(agg)):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        assert not any(legend.contains(x, y) for x, y in _display_points(ax)), "legend hides a data point"
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert labels and not any("times" in lab or "^" in lab for lab in labels), labels  # plain 976, not 10^3
        plt.close(fig)

    # Two classes: the figure is narrow; the title must still fit inside it.
    fig = plots.confusion([[721, 3], [7, 105]], ["ham", "spam"],
                          title="Confusion matrix of the best model (scratch-f0.25-s0)")
    fig.canvas.draw()
    box, page = fig.axes[0].title.get_window_extent(), fig.bbox
    assert box.x0 >= page.x0 and box.x1 <= page.x1, "title cut off"
    plt.close(fig)

    # One epoch: each curve is a single point, drawn only if it has a marker.
    rec = {"fraction": 1.0, "seed": 0, "strategy": "full", "n_train": 10,
           "history": [{"epoch": 0, "train_loss": 2.3, "val_loss": 2.2, "phase": 0}]}
    fig = plots.learning_curves([rec])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and all(line.get_marker() not in (None, "None", "", " ") for line in lines)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1"]
    plt.close(fig)
