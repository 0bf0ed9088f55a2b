"""The book build's failure paths: a notebook that raises, npm out of reach, a bad profile and a
results directory that cannot be written. Each either stops with one line before publishing
anything, or (npm) warns and still builds."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BUILD = [sys.executable, str(ROOT / "tools" / "build_book.py")]
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def mini_book(tmp_path, *cells):
    """A one-chapter book source: the repo's config and extensions, one notebook of the given cells."""
    src = tmp_path / "src"
    (src / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", src)
    for folder in ("_ext", "_static"):
        shutil.copytree(ROOT / "book" / folder, src / "book" / folder)
    (src / "book" / "intro.md").write_text("# A book\n\nOne chapter.\n")
    (src / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: executed/01_chapter\n")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell('profile = "quick"\nresults_dir = "results/quick"', metadata={"tags": ["parameters"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, src / "notebooks" / "01_chapter.ipynb")
    return src


def build(src, root, *extra, env=ENV):
    return subprocess.run(BUILD + ["--source", str(src), "--root", str(root), *extra], capture_output=True,
                          text=True, env=env, timeout=600)


def test_a_notebook_that_raises_stops_the_build_with_its_error_and_publishes_nothing(tmp_path):
    src = mini_book(tmp_path, "x = 1", "raise ValueError('the cell failed on purpose')")
    root = tmp_path / "root"
    (root / "_vendor").mkdir(parents=True)
    (root / "_vendor" / ".complete").touch()  # the JavaScript is beside the point here
    proc = build(src, root, "--profile", "smoke")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: notebook 01_chapter.ipynb failed in cell 4: ValueError: the cell failed on purpose"
    assert not (root / "executed" / "01_chapter.ipynb").exists()
    assert not list((root / "_build").rglob("*.html"))


def test_without_npm_the_book_warns_and_builds_with_mathjax_from_its_cdn(tmp_path):
    src = mini_book(tmp_path, 'from IPython.display import Math\nMath(r"\\frac{1}{k}")')
    closed = dict(ENV, npm_config_registry="http://127.0.0.1:9/", npm_config_cache=str(tmp_path / "npm-cache"),
                  npm_config_fetch_retries="0", npm_config_offline="false")
    proc = build(src, tmp_path / "root", "--profile", "smoke", env=closed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: npm could not fetch MathJax" in proc.stderr
    page = (tmp_path / "root" / "_build" / "html" / "executed" / "01_chapter.html").read_text()
    assert "cdn.jsdelivr.net/npm/mathjax" in page and "_static/mathjax" not in page


def test_a_bad_profile_or_an_unwritable_results_directory_stops_before_anything_runs(tmp_path):
    root = tmp_path / "root"
    bogus = subprocess.run(["make", "-s", "-o", ".venv/.installed", "book", "PROFILE=bogus", f"PY={sys.executable}"],
                           cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert bogus.returncode != 0
    first = bogus.stderr.strip().splitlines()[0]
    assert first == "error: PROFILE='bogus' is not a profile; expected one of smoke, quick, study, paper"
    root.mkdir()
    (root / "results").write_text("a file where the results directory should be")
    proc = build(ROOT, root, "--profile", "smoke")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "results/smoke" in proc.stderr and "not writable" in proc.stderr
    assert sorted(p.name for p in root.iterdir()) == ["results"]
