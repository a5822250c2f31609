"""examples/quickstart.ipynb runs from top to bottom in a fresh kernel (nbclient), as a user would run it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - t0
    print(f"examples/quickstart.ipynb ran in {seconds:.0f}s")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert html and "data:image/png;base64," in html[0]["data"]["text/html"]  # the Study's inline view
    assert (tmp_path / "studies" / "quickstart" / "best_model").is_dir()
    assert (tmp_path / "exports" / "digits" / "model.safetensors").is_file()
