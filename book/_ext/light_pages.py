"""Each page loads only what it uses.

- Sphinx 7.4 renders each body-only script twice: once as added by its extension (file name None),
  once copied from the registry (file name ''). For sphinx-thebe's `const THEBE_JS_URL = ...` that
  is a JavaScript error on every page. Keep each script once.
- Sphinx loads MathJax on a page whose toctree holds a page with maths: the intro carried 1.2 MB of
  MathJax for the Methods page's equations. Load it where the page itself has maths.
- The theme loads Font Awesome's 1.5 MB JavaScript on every page, though its own stylesheet
  already draws every icon the book shows from Font Awesome's web font. Drop the script.
"""
import re
from pathlib import Path

FONT_AWESOME_JS = re.compile(r'\s*<script defer src="[^"]*_static/scripts/fontawesome\.js[^"]*"></script>')


def _page_scripts(app, pagename, templatename, context, doctree):
    own_maths = app.env.get_domain("math").data["has_equations"].get(pagename, False)
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key in seen or (not own_maths and "mathjax" in (script.filename or "")):
            continue
        seen.add(key)
        kept.append(script)
    context["script_files"] = kept


def _drop_font_awesome_js(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        lighter = FONT_AWESOME_JS.sub("", text)
        if lighter != text:
            page.write_text(lighter, encoding="utf-8")
    for path in (out / "_static" / "scripts").glob("fontawesome.js*"):
        path.unlink()


def setup(app):
    app.connect("html-page-context", _page_scripts, priority=900)
    app.connect("build-finished", _drop_font_awesome_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
