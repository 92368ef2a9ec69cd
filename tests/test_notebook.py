"""notebooks/quickstart.ipynb runs top to bottom (nbclient), so it cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks/quickstart.ipynb", as_version=4)
    monkeypatch.setenv("VARJEPA_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("VARJEPA_NOTEBOOK_STEPS", os.environ.get("VARJEPA_NOTEBOOK_STEPS", "120"))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Spearman(uncertainty, u)" in text and "AURC" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # digits grid, histogram, risk–coverage curve
    assert (tmp_path / "last.ckpt").is_file()
