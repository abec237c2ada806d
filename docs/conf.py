"""Sphinx configuration: numpydoc API reference, a sphinx-gallery of examples/, the PyData
theme, and everything a page needs served from the built site (MathJax, cross-reference
inventories), so that it renders on a machine without network."""

import sys
from pathlib import Path

import torch

import nidl_vae

# The gallery runs in this process. On two shared cores, torch's default of one thread per
# core ran the examples several times slower than one thread (22 minutes for the build, where
# one thread takes about 11): a thread waiting for a busy core stalls every operation.
torch.set_num_threads(1)

DOCS = Path(__file__).parent
sys.path.insert(0, str(DOCS))
from _inventories import intersphinx_mapping as write_inventories  # noqa: E402

project = "nidl_vae"
copyright = "2026, the nidl_vae developers"
release = version = nidl_vae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # copies MathJax into _static and points mathjax_path at it (no CDN)
    "sphinx-mathjax-offline",
    "sphinx.ext.intersphinx",
    "sphinx_copybutton",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_validation_checks: set = set()
intersphinx_mapping = write_inventories(DOCS / "_build" / "inventories")
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]
templates_path = ["_templates"]

html_theme = "pydata_sphinx_theme"
html_title = f"nidl_vae {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
# prompts and output are not copied with the code
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
}
