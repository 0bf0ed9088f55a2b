"""The book, end to end on the smoke profile: every notebook runs under papermill and writes its
summary, the book builds, and a real browser (Debian's chromium) reads every page offline."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_unless_installed

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
    def refuse(constant):  # NaN and Infinity are not JSON: a browser's JSON.parse would refuse the file
        raise ValueError(f"{name}.json holds {constant}")

    return json.loads((book / "results" / "smoke" / "summary" / f"{name}.json").read_text(), parse_constant=refuse)


def test_every_notebook_ran_and_wrote_its_summary(book):
    assert NOTEBOOKS == ["01_environments", "02_masks", "03_frozen", "04_learned", "05_l1"]
    assert sorted(p.stem for p in (book / "executed").glob("*.ipynb")) == NOTEBOOKS
    random_policy = {r["env"]: r for r in summary(book, "01_environments")["random_policy"]}
    assert 0.1 < random_policy["breakout"]["mean return"] < 1.2
    capacity = summary(book, "02_masks")["capacity"]
    weights = {(r["env"], r["arch"]): r["hidden weights"] for r in capacity}
    assert len({w for (e, a), w in weights.items() if not a.endswith(("(reference)", "(control)"))} - {None}) <= 2
    for name, archs in [("03_frozen", {"dense", "random", "spatial", "predictive", "l1", "dense_wide"}),
                        ("04_learned", {"dense", "random", "spatial", "predictive", "l1", "dense_wide", "minatar_cnn"})]:
        blob = summary(book, name)
        assert {(r["env"], r["arch"]) for r in blob["final"]} == {(e, a) for e in ("breakout", "space_invaders") for a in archs}
    rows = summary(book, "claims")  # one seed: no planned test can run, and each says why
    assert {r["claim"] for r in rows if r["planned"]} == set(range(1, 8))
    assert all(r["source"] == ("paper" if r["claim"] <= 2 else "third-party summary") for r in rows)
    assert all(r["verdict"].startswith("pending") and r["p_adjusted"] == 1.0 for r in rows if r["planned"])
    sparsity = summary(book, "05_l1")["sparsity"]
    assert all(0.0 <= r["effective sparsity"] <= 1.0 for r in sparsity)


def test_injected_parameters_are_hidden(book):
    nb = json.loads((book / "executed" / "03_frozen.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and all("remove-cell" in c["metadata"]["tags"] for c in injected)
    html = (book / "_build" / "html" / "executed" / "03_frozen.html").read_text()
    assert 'profile = "smoke"' not in html


def test_every_figure_has_a_numbered_caption_and_alt_text_that_describes_it(book):
    for path in pages(book):
        html = path.read_text()
        for img in re.findall(r"<img [^>]*>", html):
            alt = re.search(r'alt="([^"]*)"', img)
            assert alt and len(alt.group(1).split()) >= 4 and not alt.group(1).endswith((".png", ".svg")), (path.stem, img[:200])
        figures = re.findall(r"<figure.*?</figure>", html, flags=re.S)
        assert all(re.search(r'<span class="caption-number">Fig\. \d+', f) for f in figures), path.stem
        plots = len(re.findall(r'<img [^>]*src="[^"]*_images/', html))
        assert plots == sum("_images/" in f for f in figures), (path.stem, "a plot outside a captioned figure")


def pages(book):
    html = book / "_build" / "html"
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts and p.name not in ("genindex.html", "search.html"))


def test_analysis_code_is_hidden_behind_toggles_and_chapters_open_with_their_claims(book):
    for name in ("03_frozen", "04_learned", "05_l1"):
        nb = json.loads((book / "executed" / f"{name}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        tags = [set(c["metadata"].get("tags", [])) for c in code]
        assert all(t & {"hide-input", "hide-cell", "remove-cell", "remove-input"} for t in tags), name
        html = (book / "_build" / "html" / "executed" / f"{name}.html").read_text()
        assert html.index('class="claims"') < html.index("<img"), name  # the claims table comes before the figures


def test_each_results_chapter_reads_its_masks_against_both_dense_baselines(book):
    for name, regimes in (("03_frozen", ["frozen"]), ("04_learned", ["learned"]), ("05_l1", ["frozen", "learned"])):
        html = (book / "_build" / "html" / "executed" / f"{name}.html").read_text()
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))
        section = text[text.index("Sparsity or width?"):]
        for regime in regimes:  # one seed in the smoke book: the reading says why it has no verdict
            assert f"Reading, {regime}" in section and "against dense_wide: not enough runs yet" in section, name


def test_the_intro_states_the_scale_the_book_was_built_at(book):
    html = (book / "_build" / "html" / "book" / "intro.html").read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))
    assert "This book was built with the smoke profile: every agent trains for 800 frames, 1/6,250 of the paper" in text
    assert "with 1 seed per configuration (paper: 30)" in text and "{{" not in text


@pytest.fixture(scope="module")
def browser():
    skip_unless_installed("" if Path(CHROMIUM).exists() else "Debian's chromium", "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        yield browser
        browser.close()


def open_page(browser, path, width=1280, height=900):
    """A page loaded offline, with every failed request, request outside the book and console
    error collected."""
    context = browser.new_context(offline=True, viewport={"width": width, "height": height})
    page = context.new_page()
    page.problems = []
    page.on("requestfailed", lambda r: page.problems.append(f"failed request {r.url} ({r.failure})"))
    page.on("request", lambda r: page.problems.append(f"request outside the book {r.url}")
            if not r.url.startswith(("file:", "data:", "blob:")) else None)
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error {e}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page


def test_every_page_renders_offline_without_a_failed_request_or_console_error(book, browser):
    sys.path.insert(0, str(ROOT / "tools"))
    import screenshots

    built = pages(book)
    assert {p.stem for p in built} >= set(NOTEBOOKS) | {"intro", "methods", "choices", "reproducing", "references"}
    for path in built:
        page = open_page(browser, path)
        if path.stem == "02_masks":
            page.wait_for_selector(".mask-explorer svg", timeout=15_000)
        page.wait_for_timeout(500)
        text = page.inner_text("body")
        assert "Traceback" not in text and "Error" not in text.replace("errorbar", ""), path.name
        if path.stem in ("03_frozen", "04_learned", "05_l1"):
            figures = page.locator("img[src$='.png']")
            assert figures.count() >= 1, path.name
            assert page.evaluate("el => el.naturalWidth", figures.first.element_handle()) > 0
        if path.stem == "methods":
            page.wait_for_selector("mjx-container", timeout=10_000)  # MathJax, from our own copy
        assert page.evaluate(screenshots.TABLES_CUT) == [], path.name  # every table fits a laptop's page
        assert page.problems == [], (path.name, page.problems)
        page.context.close()


def test_every_page_fits_a_phone_and_stays_within_its_weight_budget(book, browser):
    sys.path.insert(0, str(ROOT / "tools"))
    import screenshots

    weights, cut = {}, {}
    for path in pages(book):
        page = screenshots.visit(browser, path, 390, 844)
        weights[path] = screenshots.weight(page.files)
        if wide := page.evaluate(screenshots.OVERFLOW):
            cut[path.stem] = wide
        page.context.close()
    assert cut == {}, cut  # content wider than a phone, outside a box that scrolls
    assert screenshots.over_budget(weights) == [], {p.stem: w for p, w in weights.items()}
    assert "tex-chtml.js" not in (book / "_build" / "html" / "book" / "intro.html").read_text()  # no maths, no MathJax


def test_the_static_mask_explorer_draws_each_units_inputs_and_centre_for_every_control(book, browser):
    sys.path.insert(0, str(ROOT / "notebooks"))
    import companion as bk
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = open_page(browser, book / "_build" / "html" / "executed" / "02_masks.html")
    explorer = page.locator(".mask-explorer")
    explorer.wait_for(timeout=15_000)
    controls = {name: explorer.get_by_label(name, exact=True) for name in ("game", "architecture", "seed", "channel")}
    unit = explorer.get_by_label("unit number", exact=True)
    lit = lambda: sorted(int(c) for c in explorer.locator(".mx-panel").first.locator("rect.on").evaluate_all(
        "rs => rs.map(r => r.dataset.cell)"))

    def shown(env, arch, seed, u, channel):  # drawing waits on the browser inflating the mask's data
        state = f"{env}|{arch}|{seed}|{u}|{channel}"
        try:
            page.wait_for_function("s => document.querySelector('.mask-explorer').dataset.shown === s", arg=state,
                                   timeout=5_000)
        except PlaywrightTimeout:
            assert explorer.get_attribute("data-shown") == state, page.problems

    def truth(env, arch, seed):
        cfg = bk.profiles.profile_config("smoke", env=env, arch=arch, regime="learned" if arch == "l1" else "frozen")
        if arch == "l1":
            return bk.sd.train(cfg, [seed], book / "results" / "smoke", progress=False)[0].mask, None
        return bk.sd.build_mask(cfg, seed)[0].tolist(), (None if arch in ("dense", "dense_wide")
                                                         else bk.sd.mask_centres(cfg, seed).tolist())

    checked = 0
    for env in ("breakout", "space_invaders"):
        controls["game"].select_option(env)
        for arch in ("spatial", "predictive", "random", "l1", "dense", "dense_wide"):
            controls["architecture"].select_option(arch)
            seeds = controls["seed"].locator("option").all_inner_texts()
            assert seeds == ["0"], (env, arch, seeds)  # the smoke profile's one seed (test_companion: several)
            mask, centres = truth(env, arch, 0)
            for u in sorted({0, min(137, len(mask) - 1), len(mask) - 1}):
                unit.fill(str(u))
                for channel in (0, 1):
                    controls["channel"].select_option(str(channel))
                    shown(env, arch, "0", u, channel)
                    assert explorer.get_attribute("data-inputs") == ",".join(map(str, sorted(mask[u]))), (env, arch, u)
                    assert lit() == sorted(i % 100 for i in mask[u] if i // 100 == channel)
                    marks = explorer.locator(".mx-centre")
                    if centres is None:
                        assert marks.count() == 0
                    else:
                        assert marks.count() == (2 if centres[u] // 100 == channel else 1)
                        assert int(marks.last.get_attribute("data-cell")) == centres[u] % 100
                    checked += 1
    assert checked >= 2 * 6 * 2 * 2
    controls["architecture"].select_option("row")  # registered in the notebook: drawn from its own data
    shown("space_invaders", "row", "0", int(unit.input_value()), 1)
    unit.fill("5000")
    assert unit.input_value() == str(int(explorer.locator("input[type=range]").get_attribute("max")))
    assert page.problems == [], page.problems
