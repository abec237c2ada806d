"""Every gallery example runs (in its fast mode: a few epochs) and writes nothing to the cwd."""

import os
import runpy
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path, monkeypatch):
    monkeypatch.setenv("NIDL_VAE_FAST_EXAMPLES", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    try:
        runpy.run_path(str(script), run_name="__main__")
        assert plt.get_fignums(), "an example should draw figures"
    finally:
        plt.close("all")
    assert os.listdir(tmp_path) == []


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES} >= {
        "plot_quickstart",
        "plot_model_selection",
        "plot_cvae",
        "plot_crmvae",
        "plot_neuroimaging",
        "plot_harmonisation",
        "plot_missing_values",
    }
