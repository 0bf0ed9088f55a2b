"""Sphinx 7.4 renders each body-only script twice: once as added by its extension (file name
None), once copied from the registry (file name ''). For sphinx-thebe's
`const THEBE_JS_URL = ...` that is a JavaScript error on every page. Keep each script once."""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
