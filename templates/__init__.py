"""Package data: the Jinja templates that lay out generated modules (one per kind, plus partials)."""
