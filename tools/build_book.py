"""Build the book: run every notebook with papermill, then compile it with Jupyter Book.

    python tools/build_book.py --profile study

Each notebook runs into a staging folder and is copied into `executed/` only when papermill
succeeded; a failing notebook stops the build with that cell's error, so no error page is ever
published. MathJax is fetched from npm into `_vendor` so the built book works offline; when
npm is unreachable the book falls back to its CDN.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import papermill as pm
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "notebooks")]
from companion import claims_html, estimate_text, p_value_text  # noqa: E402
from study import profiles, store  # noqa: E402

NPM_PACKAGES = ["mathjax@3.2.2"]


def fetch_static(vendor: Path) -> bool:
    """Vendor MathJax from npm into `vendor` (not _static: Jupyter Book would load every script
    in it); False, with a warning, when npm fails."""
    done = vendor / ".complete"  # names what it holds: another list of packages is fetched anew
    if done.exists() and done.read_text() == " ".join(NPM_PACKAGES):
        return True
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", tmp,
                            *NPM_PACKAGES], check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as err:
            print(f"warning: npm could not fetch MathJax ({type(err).__name__}); the book will load it from "
                  "its CDN and needs the internet for its equations", file=sys.stderr)
            return False
        shutil.rmtree(vendor, ignore_errors=True)
        shutil.copytree(Path(tmp) / "node_modules" / "mathjax" / "es5", vendor / "mathjax")
    done.write_text(" ".join(NPM_PACKAGES))
    return True


def run_notebooks(notebooks: Path, profile: str, staging: Path, executed: Path, results_dir: Path) -> dict:
    timings = {}
    for nb in sorted(notebooks.glob("*.ipynb")):
        out = staging / nb.name
        print(f"== {nb.stem} (profile {profile})", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters={"profile": profile, "results_dir": str(results_dir)},
                                kernel_name="python3", cwd=str(notebooks), progress_bar=False, log_output=True)
        except pm.PapermillExecutionError as err:
            sys.exit(f"error: notebook {nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}")
        timings[nb.stem] = time.perf_counter() - start
        book_copy = json.loads(out.read_text())
        book_copy["metadata"].pop("widgets", None)  # the explorer draws from its own output, not this state
        for cell in book_copy["cells"]:
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags:
                tags.append("remove-cell")
        (executed / nb.name).write_text(json.dumps(book_copy))
    return timings


def fraction(part: int, whole: int) -> str:
    return "all" if part == whole else f"1/{whole // part:,}" if whole % part == 0 else f"{part / whole:.2g} times"


def scale_statement(profile: str, stored: tuple[int, int] | None = None) -> dict:
    """What the intro says of this build's scale, beside the `paper` profile's; stored: (runs
    stored, runs planned) of a sweep's profile whose store does not hold them all yet."""
    p, paper = profiles.PROFILES[profile], profiles.PROFILES["paper"]
    seeds = f"{len(p.seeds)} seed" + "s" * (len(p.seeds) != 1)
    scale = (f"This book was built with the `{profile}` profile: every agent trains for {p.frames:,} frames, "
             f"{fraction(p.frames, paper.frames)} of the `paper` profile's {paper.frames:,}, with {seeds} per "
             f"configuration (`paper`: {len(paper.seeds)}). `paper` follows MinAtar's reference schedule; the "
             "paper's own frame and seed counts are not in the text available to us.")
    if stored:
        scale += (f" The sweep that makes it has stored {stored[0]:,} of its {stored[1]:,} planned runs so far; "
                  "every table and figure gives the seeds it holds.")
    reading = ("At this scale few tests can decide anything: read the curves as a working pipeline and a first "
               "look, not a replication."
               if p.frames < 500_000 or len(p.seeds) < 3 else
               "Each claim's test was fixed before its numbers (Methods), so a verdict is evidence at this scale; the "
               "paper's agents may train longer, and its conclusions may rest on later learning.")
    return {"scale": scale, "reading": reading}


def write_paper_claims(root: Path, results_dir: Path):
    """book/_generated/paper_claims.md, which the intro includes: the paper's own claims (its
    abstract's words), each planned test's verdict, from the notebooks' claims.json."""
    source = results_dir / "summary" / "claims.json"
    rows = json.loads(source.read_text()) if source.exists() else []  # a book whose notebooks test no claim
    table = []
    for r in rows:
        if r["source"] != "paper" or not r["planned"]:
            continue
        game = r["env"].replace("_", " ").title() if r["env"] else "both games"
        table.append({"claim": r["claim"], "where": ", ".join(x for x in (game, r["regime"]) if x), "test": r["test"],
                      "estimate [95% CI]": estimate_text(r), "p (Holm)": p_value_text(r["p_adjusted"]),
                      "verdict": r["verdict"]})
    out = root / "book" / "_generated" / "paper_claims.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = ["claim", "where", "test", "estimate [95% CI]", "p (Holm)", "verdict"]
    out.write_text(claims_html(pd.DataFrame(table, columns=columns)) + "\n")


def build_config(root: Path, profile: str, offline: bool, stored: tuple[int, int] | None = None) -> Path:
    """The book's _config.yml as this build runs it: the intro's statement of scale, paths made
    absolute (the file lives in _build), and the CDN scripts when npm could not vendor ours."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("parse", {})["myst_substitutions"] = scale_statement(profile, stored)
    sphinx = config["sphinx"]["config"]
    if not offline:
        sphinx.pop("mathjax_path")  # points into _vendor
        sphinx["html_static_path"] = [p for p in sphinx["html_static_path"] if p != "_vendor"]
    sphinx["html_static_path"] = [str(root / p) for p in sphinx["html_static_path"]]
    config["sphinx"]["local_extensions"] = {k: str(root / v) for k, v in config["sphinx"]["local_extensions"].items()}
    path = root / "_build" / "_config_build.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # the scripts load in the order given
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="study", help="one of " + ", ".join(profiles.PROFILES))
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="where the book is assembled, its results stored and built (default: the repo)")
    parser.add_argument("--source", type=Path, default=ROOT,
                        help="where _config.yml, _toc.yml, book/ and notebooks/ come from (default: the repo)")
    args = parser.parse_args()

    start = time.perf_counter()
    root, source = args.root.resolve(), args.source.resolve()
    if args.profile not in profiles.PROFILES:
        sys.exit(f"error: PROFILE={args.profile!r} is not a profile; expected one of {', '.join(profiles.PROFILES)}")
    results_dir = root / "results" / args.profile
    try:
        store.check_results_dir(results_dir)
    except ValueError as err:
        sys.exit(f"error: {err}")
    stored = None
    if not profiles.PROFILES[args.profile].trains_in_book:  # the book reads what the sweep has stored
        pending = profiles.missing_runs(args.profile, results_dir)
        if pending:
            planned = profiles.profile_runs(args.profile)
            stored = (sum(store.load_run(results_dir, *run) is not None for run in planned), len(planned))
            if not stored[0]:
                sys.exit(f"error: {pending}")
            print(f"warning: {pending}", file=sys.stderr)
    offline = fetch_static(root / "_vendor")
    if root != source:
        for name in ("_config.yml", "_toc.yml", "book"):
            src, dst = source / name, root / name
            if src.exists():
                shutil.rmtree(dst, ignore_errors=True)
                (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    executed = root / "executed"
    shutil.rmtree(executed, ignore_errors=True)
    executed.mkdir(parents=True)
    (root / "_build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "_build") as staging:
        timings = run_notebooks(source / "notebooks", args.profile, Path(staging), executed, results_dir)

    write_paper_claims(root, results_dir)
    config = build_config(root, args.profile, offline, stored)
    command = ["jupyter-book", "build", str(root), "-W", "-n", "--keep-going", "--config", str(config)]
    if subprocess.run(command, cwd=root).returncode != 0:
        sys.exit("error: jupyter-book build failed; its warnings are above")
    timings["total (with book build)"] = time.perf_counter() - start
    (root / "_build" / f"timings-{args.profile}.json").write_text(json.dumps(timings, indent=1))
    print("wall-clock seconds:", json.dumps({k: round(v) for k, v in timings.items()}))
    print(f"book: {root / '_build' / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
