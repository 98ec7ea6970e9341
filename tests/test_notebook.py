"""docs/colab.ipynb runs end to end on CPU (nbclient + a real Python kernel) with its CPU switch:
the CPU config, offline sources, a tiny run from a tiny transformers GPT-2 directory (standing in for
gpt2-medium), a temp dir instead of Google Drive. So the Colab notebook cannot rot."""
import json
import os

import pytest

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "docs", "colab.ipynb")


def sources():
    nb = json.load(open(NOTEBOOK))
    return [("".join(c["source"]), c["cell_type"]) for c in nb["cells"]]


def test_notebook_shape():
    code = "\n".join(s for s, kind in sources() if kind == "code")
    assert "%cd {REPO}" in code and "!cd" not in code and "&& cd" not in code   # a `cd` in `!` is forgotten at once
    assert "config/finetune_nanophi.py" in code and "--budget={CONFIG}" in code and "--skip_unavailable=True" in code
    assert '"resume" if os.path.exists(f"{OUT}/ckpt.pt")' in code and '"/content/drive/MyDrive/nanophi"' in code
    assert "--compare_with={BASE}" in code and "export.py" in code
    for tag in ("Textbook", "Code", "Math", "Logic", "Excerpt", "Chat", "Roleplay"):
        assert f'"{tag}":' in code


@pytest.mark.slow
def test_notebook_runs_on_cpu(tmp_path, tiny_hf_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    work = tmp_path / "drive"
    monkeypatch.setenv("NANOPHI_NOTEBOOK_CPU", "1")
    monkeypatch.setenv("NANOPHI_NOTEBOOK_DIR", str(work))
    monkeypatch.setenv("NANOPHI_NOTEBOOK_BASE", tiny_hf_dir)
    monkeypatch.setenv("NANOPHI_REPO_URL", ROOT)   # the clone and set-up cells run too: cloned from this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))  # stream chunks
    assert os.path.isfile(tmp_path / "nanophi" / "train.py") and "setup: done" in out
    assert f"init_from = {tiny_hf_dir}" in out                  # a first session starts from the base directory
    assert "--- [Math]\n[Math] What is 17 + 25?\nAnswer:" in out and "--- [Chat]" in out
    table = (work / "out-nanophi" / "eval.md").read_text()
    assert "| em/math |" in table and "| eot/em/math |" in table and "delta" in table
    assert os.path.isfile(work / "out-nanophi" / "hf" / "model.safetensors")
    # a disconnected session: running the training cell again resumes from the checkpoint on "Drive"
    nb2 = nbformat.read(NOTEBOOK, as_version=4)
    train = next(i for i, c in enumerate(nb2.cells) if "train.py {CONFIG}" in c.source)
    nb2.cells = nb2.cells[:train + 1]
    NotebookClient(nb2, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out2 = "".join(o.get("text", "") for o in nb2.cells[train].get("outputs", []))
    assert "init_from = resume" in out2 and "resumed from" in out2


def run_until_error(tmp_path, env, monkeypatch):
    """Execute the notebook as Run all does; return the first failing cell's index and its error text."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    failed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    error = next(o for o in nb.cells[failed[0]].outputs if o.get("output_type") == "error")
    ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
    return failed[0], f"{error['ename']}: {error['evalue']}", ran


@pytest.mark.slow
def test_notebook_without_repo_url_stops_at_the_first_cell(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOPHI_REPO_URL", raising=False)
    cell, error, ran = run_until_error(tmp_path, {"NANOPHI_NOTEBOOK_CPU": "1",
                                                  "NANOPHI_NOTEBOOK_DIR": str(tmp_path / "drive")}, monkeypatch)
    first = next(i for i, (_, kind) in enumerate(sources()) if kind == "code")
    assert cell == first and ran == [first]
    assert error.startswith("SystemExit: Set REPO_URL in the first cell") and "\n" not in error


@pytest.mark.slow
def test_a_failed_step_stops_the_notebook_with_its_name(tmp_path, monkeypatch):
    cell, error, ran = run_until_error(tmp_path, {"NANOPHI_NOTEBOOK_CPU": "1", "NANOPHI_NOTEBOOK_DIR": str(tmp_path / "drive"),
                                                  "NANOPHI_REPO_URL": str(tmp_path / "no-such-repo")}, monkeypatch)
    assert error.startswith("SystemExit: step 'clone' failed (exit 128)")
    assert ran[-1] == cell      # nothing after the failed step ran
