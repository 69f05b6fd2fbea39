"""attnforge as a user gets it: build the wheel, install it into a fresh venv outside the repository,
and use it there (tox -e package; part of .ci/run).

1. The wheel's top-level names are ``attnforge`` alone; templates, specs and schema ride along.
2. With torch alone installed (no jinja2, pydantic, pyyaml, ruff): import attnforge, build a
   block and run it; ``attnforge list`` and ``show`` work.
3. With ``attnforge[generate,check]``: generate a catalogue from the user's own specs, import a
   block from it, and run every check on it with ``pytest --attnforge-catalogue``.
4. Generated output is byte-identical to the repository's, with another ruff installed or none.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"


def run(*cmd: str | Path, cwd: Path, env_bin: Path | None = None) -> str:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(str(c) for c in cmd)}")
    return proc.stdout


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="attnforge-package-"))
    try:
        dist = work / "dist"
        run(
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, REPO, cwd=work
        )
        (wheel,) = dist.glob("attnforge-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        top = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
        assert top == ["attnforge"], f"the wheel's top-level names are {top}, not ['attnforge']"
        for needed in (
            "attnforge/templates/mha.py.j2",
            "attnforge/specs/schema.json",
            "attnforge/specs/sweeps/attention.yaml",
            "attnforge/generated/__init__.py",
        ):
            assert needed in names, f"{needed} is not in the wheel"
        print(
            f"wheel: {wheel.name}, {wheel.stat().st_size / 1024:.0f} KiB, {len(names)} files, top level {top}"
        )

        venv = work / "venv"
        run(sys.executable, "-m", "venv", venv, cwd=work)
        py = venv / "bin" / "python"
        pip = [py, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS]
        run(*pip, wheel, cwd=work)  # its dependencies: torch alone
        # torch itself requires jinja2 (for inductor's code generation); take it away to prove
        # the committed blocks need nothing of the generator's.
        run(py, "-m", "pip", "uninstall", "--quiet", "--yes", "jinja2", cwd=work)
        project = work / "project"
        project.mkdir()
        absent = run(
            py,
            "-c",
            "import importlib.util as u; print([m for m in ('jinja2', 'pydantic', 'yaml', 'ruff') if u.find_spec(m)])",
            cwd=project,
        )
        assert absent.strip() == "[]", f"the torch-only install has {absent.strip()}"
        out = run(
            py,
            "-c",
            "import attnforge, torch; y = attnforge.build('cbam_paper', 32)(torch.randn(2, 32, 8, 8)); "
            "print(type(y).__name__, tuple(y.shape), attnforge.__version__)",
            cwd=project,
        )
        assert "Tensor (2, 32, 8, 8)" in out, out
        attnforge = venv / "bin" / "attnforge"
        assert "cbam_paper" in run(attnforge, "list", "--kind", "cbam", cwd=project)
        assert "parameters at width 32" in run(
            attnforge, "show", "cbam_paper", "--width", "32", cwd=project
        )

        run(*pip, f"{wheel}[generate,check]", cwd=work)
        specs = project / "specs"
        specs.mkdir()
        (specs / "mine.yaml").write_text(
            textwrap.dedent(
                """\
                variants:
                  - name: my_se
                    kind: channel
                    description: SE with a SiLU MLP and r = 8, as in EfficientNet.
                    reduction: 8
                    activation: silu
                  - name: my_attn
                    kind: mha
                    heads: 4
                    kv_heads: 2
                    causal: true
                """
            )
        )
        run(attnforge, "generate", "--specs", "specs", "--out", "mypkg", cwd=project)
        out = run(
            py,
            "-c",
            "import torch; from mypkg.my_se import MySe; print(tuple(MySe(16)(torch.randn(2, 16, 5, 5)).shape))",
            cwd=project,
        )
        assert out.strip() == "(2, 16, 5, 5)", out
        out = run(
            py,
            "-m",
            "pytest",
            "--attnforge-catalogue",
            "mypkg",
            "-q",
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
            cwd=project,
        )
        print(out.strip().splitlines()[-1])

        # Byte-identical output, whatever formatter the user has: none, then another ruff.
        shutil.copytree(
            REPO / "specs",
            project / "ours",
            ignore=shutil.ignore_patterns("sweeps", "__init__.py", "__pycache__"),
        )
        for label in ("no formatter", "ruff 0.17.5"):
            if label != "no formatter":
                run(*pip, "ruff==0.17.5", cwd=work)
            target = project / f"generated_{label.split()[0]}"
            run(attnforge, "generate", "--specs", "ours", "--out", target, cwd=project)
            for path in sorted((REPO / "generated").glob("*.py")):
                mine = (target / path.name).read_bytes()
                assert mine == path.read_bytes(), f"{path.name} differs with {label}"
            print(f"generated catalogue byte-identical to the repository's with {label}")
        print("package check: OK")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
