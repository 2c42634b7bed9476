"""The notebook walkthrough runs top to bottom in a fresh kernel and draws its pictures inline.

It is committed without outputs (a diff then shows only what changed in the recipe, and no
stale figure can contradict the code); this test is what keeps it from rotting.
"""

from helpers import ROOT

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def test_the_notebook_is_committed_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_notebook_runs_top_to_bottom_and_shows_its_pictures(mnist_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DIGIT_CLASSIFIER_DATA_DIR", str(mnist_dir))  # as a user offline would
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    pictures = [output for output in outputs
                if {"image/png", "image/jpeg"} & set(output.get("data", {}))]
    assert len(pictures) >= 5  # the digits, the curves, the heatmap, the mistakes, the photo
    text = "".join(output.get("text", "") for output in outputs)
    accuracy = float(text.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 96  # two epochs of the default network: about 97.5%
    assert "test04_label4_rgb.jpg -> 4" in text
