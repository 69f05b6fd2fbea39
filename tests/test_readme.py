"""The README stays true: its spec reference is the models' own, field for field."""

from pathlib import Path

from attnforge.spec import reference_markdown

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_spec_reference_matches_the_models():
    start = README.index("<!-- spec-reference:start")
    start = README.index("\n", start) + 1
    end = README.index("<!-- spec-reference:end -->")
    assert README[start:end] == reference_markdown(), (
        "regenerate the README's spec reference from attnforge.spec.reference_markdown()"
    )


def test_quick_start_is_two_commands():
    assert "pip install tox && tox -e generate" in README
    assert "\ntox       " in README
