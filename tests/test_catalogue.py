"""Every check (harness/checks.py) on every variant of the catalogue: ``<variant>-<check>-<case>``.

The cases come from the catalogue through the harness's pytest plugin; a new spec file is covered
with no new test code. Options: --variants, --devices, --shard, --gradcheck, --catalogue.
"""


def test_catalogue(attnforge_case, attnforge_options):
    attnforge_case.run(**attnforge_options)
