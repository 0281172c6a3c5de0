"""The tutorial notebooks (docs/tutorials/*.ipynb) run top to bottom without an error.

Each notebook is executed in memory with nbclient (the ``python3`` kernel of the test extras'
ipykernel, in the notebook's folder); nothing is written back to the committed files. A notebook
that needs data files (its metadata ``chainrule.needs_data``) is skipped, with the reason, when
they are not where the library looks for them ($CHAINRULE_DATA, else ../shared/data beside the
repository).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: seconds per notebook; each takes under two minutes on 2 shared CPU cores, with room for load
TIMEOUT = 600


def data_dir(needed: list[str]) -> Path | None:
    """The folder holding every file in ``needed``, looked up as the notebooks do."""
    candidates = [os.environ.get("CHAINRULE_DATA"), ROOT.parent / "shared" / "data"]
    for d in candidates:
        if d and all((Path(d) / f).is_file() for f in needed):
            return Path(d)
    return None


def test_there_are_tutorials():
    assert len(NOTEBOOKS) >= 4, f"expected at least four notebooks in {TUTORIALS}"
    assert (TUTORIALS / "README.md").is_file()
    index = (TUTORIALS / "README.md").read_text()
    for nb in NOTEBOOKS:
        assert nb.name in index, f"{nb.name} is not listed in docs/tutorials/README.md"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch):
    nb = nbformat.read(path, as_version=4)
    needed = nb.metadata.get("chainrule", {}).get("needs_data", [])
    if needed and data_dir(needed) is None:
        pytest.skip(f"{path.name} needs {', '.join(needed)}: not found (set CHAINRULE_DATA)")
    # one thread per kernel: the notebooks are timed so, and the test suite may run beside them
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    for cell in nb.cells:  # execute a fresh copy: no stored output may hide a failure
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{str(e)[-4000:]}", pytrace=False)
