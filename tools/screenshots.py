"""Screenshots of every page of the built book as a reader meets it, at a laptop's width (1,280 px)
and a phone's (390 px), in Debian's chromium, offline; per page, whether content is wider than the
viewport outside a scroll box, and what the page weighs against the book's budgets.

    python tools/screenshots.py                  # _build/html -> _build/screenshots/<page>-<width>.png
    python tools/screenshots.py --pages intro 03_frozen --widths 390
"""
import argparse
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Elements wider than the viewport whose own box, or an ancestor's, does not scroll sideways.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth, cut = [];
  for (const el of document.querySelectorAll("main *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.right <= width + 1) continue;
    let scrolls = false;
    for (let a = el; a && a !== document.body; a = a.parentElement) {
      const style = getComputedStyle(a);
      if (["auto", "scroll"].includes(style.overflowX) || style.overflowX === "hidden" && a !== el) { scrolls = true; break; }
    }
    if (!scrolls) cut.push(`${el.tagName.toLowerCase()}.${el.className}`.slice(0, 80));
  }
  return cut.slice(0, 10);
}"""


# Tables that need sideways scrolling in their box: fine on a phone, a cut table on a laptop.
TABLES_CUT = """() => [...document.querySelectorAll("main table")]
  .filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth + 1).map(t => t.innerText.slice(0, 40))"""
LAPTOP = 1280

MB = 1_000_000
# What a reader downloads to open a page: the emptiest page at most EMPTIEST; any other page at most
# PAGE beyond it, MATHS where it has equations (MathJax), and the masks page, with the explorer's
# data, EXPLORER.
EMPTIEST, PAGE, MATHS, EXPLORER = 2.5 * MB, 1.0 * MB, 1.5 * MB, 3.0 * MB


def visit(browser, path: Path, width: int, height: int = 900):
    """The page at `path`, opened offline once its requests have gone quiet, with `page.files`: every
    URL it asked for. Each page gets a context of its own: pages sharing one can be served another's
    files from the renderer's memory cache without asking, and would weigh less than they do."""
    context = browser.new_context(offline=True, viewport={"width": width, "height": height})
    page = context.new_page()
    page.files = set()
    page.on("request", lambda request: page.files.add(request.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("networkidle")
    return page


def weight(urls: set[str]) -> int:
    """Bytes on disk of the distinct files behind a page's file: URLs."""
    files = {Path(unquote(urlparse(u).path)) for u in urls if u.startswith("file:")}
    return sum(f.stat().st_size for f in files if f.is_file())


def over_budget(weights: dict[Path, int]) -> list[str]:
    """One line per page over its budget (see EMPTIEST), empty when every page is within."""
    floor = min(weights.values())
    problems = [f"the emptiest page weighs {floor / MB:.2f} MB > {EMPTIEST / MB} MB"] if floor > EMPTIEST else []
    for path, size in weights.items():
        extra = EXPLORER if path.stem == "02_masks" else MATHS if 'class="math' in path.read_text() else PAGE
        if size - floor > extra:
            problems.append(f"{path.stem} weighs {(size - floor) / MB:.2f} MB beyond the emptiest page > {extra / MB} MB")
    return problems


def pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if p.parent.name in ("book", "executed"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--widths", type=int, nargs="+", default=[1280, 390])
    parser.add_argument("--pages", nargs="+", help="page names (default: every page)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in pages(args.html) if not args.pages or p.stem in args.pages]
    weights = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        for width in args.widths:
            for path in chosen:
                page = visit(browser, path, width)
                shot = args.out / f"{path.stem}-{width}.png"
                page.screenshot(path=str(shot), full_page=True)
                cut = page.evaluate(OVERFLOW) + (page.evaluate(TABLES_CUT) if width >= LAPTOP else [])
                weights[path] = weight(page.files)
                print(f"{shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot}  {weights[path] / MB:.2f} MB"
                      + (f"  wider than the page: {cut}" if cut else ""))
                page.context.close()
        browser.close()
    if not args.pages:
        print("\n".join(over_budget(weights)) or "every page within its weight budget")


if __name__ == "__main__":
    main()
