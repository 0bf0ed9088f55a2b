"""The book, end to end on the smoke profile: every notebook runs under papermill and writes its
summary, the book builds, and a real browser (Debian's chromium) reads every page offline."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--profile", "smoke",
                           "--root", str(root)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def summary(book, name):
    return json.loads((book / "results" / "smoke" / "summary" / f"{name}.json").read_text())


def test_every_notebook_ran_and_wrote_its_summary(book):
    assert NOTEBOOKS == ["01_environments", "02_masks", "03_frozen", "04_learned", "05_l1"]
    assert sorted(p.stem for p in (book / "executed").glob("*.ipynb")) == NOTEBOOKS
    random_policy = {r["env"]: r for r in summary(book, "01_environments")["random_policy"]}
    assert 0.1 < random_policy["breakout"]["mean return"] < 1.2
    capacity = summary(book, "02_masks")["capacity"]
    weights = {(r["env"], r["arch"]): r["hidden weights"] for r in capacity}
    assert len({w for (e, a), w in weights.items() if a != "minatar_cnn (reference)"} - {None}) <= 2
    for name, archs in [("03_frozen", {"dense", "random", "spatial", "predictive", "l1"}),
                        ("04_learned", {"dense", "random", "spatial", "predictive", "l1", "minatar_cnn"})]:
        blob = summary(book, name)
        assert {(r["env"], r["arch"]) for r in blob["final"]} == {(e, a) for e in ("breakout", "space_invaders") for a in archs}
        assert blob["claims"] and all(c[-1] in {"supports", "contradicts", "inconclusive at this scale"}
                                      for c in blob["claims"])
    sparsity = summary(book, "05_l1")["sparsity"]
    assert all(0.0 <= r["effective sparsity"] <= 1.0 for r in sparsity)


def test_injected_parameters_are_hidden(book):
    nb = json.loads((book / "executed" / "03_frozen.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and all("remove-cell" in c["metadata"]["tags"] for c in injected)
    html = (book / "_build" / "html" / "executed" / "03_frozen.html").read_text()
    assert 'profile = "smoke"' not in html


def pages(book):
    html = book / "_build" / "html"
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts and p.name not in ("genindex.html", "search.html"))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_every_page_renders_offline_in_a_real_browser(book):
    from playwright.sync_api import sync_playwright

    built = pages(book)
    assert {p.stem for p in built} >= set(NOTEBOOKS) | {"intro", "methods", "choices", "reproducing", "references"}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        context = browser.new_context(offline=True)
        outside = []
        context.on("request", lambda r: outside.append(r.url)
                   if not r.url.startswith(("file:", "data:", "blob:")) else None)
        for path in built:
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            page.wait_for_timeout(300)
            text = page.inner_text("body")
            assert "Traceback" not in text and "Error" not in text.replace("errorbar", ""), path.name
            assert not errors, (path.name, errors)
            if path.stem in ("03_frozen", "04_learned", "05_l1"):
                figures = page.locator("img[src$='.png']")
                assert figures.count() >= 1, path.name
                assert page.evaluate("el => el.naturalWidth", figures.first.element_handle()) > 0
            if path.stem == "methods":
                page.wait_for_selector("mjx-container", timeout=10_000)  # MathJax, from our own copy
            page.close()
        assert outside == []

        page = context.new_page()
        page.goto((book / "_build" / "html" / "executed" / "02_masks.html").as_uri())
        explorer = page.locator(".widget-vbox", has=page.locator(".widget-image")).last
        explorer.wait_for(timeout=15_000)

        def shown():
            images = explorer.locator(".widget-image")
            return [images.nth(i).get_attribute("src") for i in range(images.count()) if images.nth(i).is_visible()]

        before = shown()
        assert len(before) == 1
        handle = explorer.locator(".noUi-handle")
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(300)
        after = shown()
        assert len(after) == 1 and after != before
        browser.close()
