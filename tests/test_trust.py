"""The generator is a trust boundary: nothing in a spec, a file name or an output directory can run
code, exhaust memory or lose a file. One test class per class of attack (README, "Trust and limits").
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from attnforge import cli
from attnforge import generate as gen
from attnforge.load import Budget, SpecError, load_specs

ROOT = Path(__file__).resolve().parent.parent


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _run(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attnforge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _spec_dir(tmp_path: Path, files: dict[str, str], name: str = "specs") -> Path:
    specs = tmp_path / name
    specs.mkdir()
    for file, text in files.items():
        (specs / file).write_text(text)
    return specs


ONE = "variants:\n  - {name: se_one, kind: channel}\n"


# --- 1. Code injection through paths ------------------------------------------------------------------


class TestInjection:
    def test_a_spec_file_name_with_code_is_refused(self, tmp_path: Path):
        specs = _spec_dir(tmp_path, {'a\n__import__("os").system("touch PWNED")\n#.yaml': ONE})
        out = tmp_path / "pkg"
        proc = _run("generate", "--specs", str(specs), "--out", str(out), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "rename it" in proc.stderr and "\\n__import__" in proc.stderr  # shown escaped
        assert not out.exists() and not (tmp_path / "PWNED").exists()

    def test_the_specs_directory_name_never_reaches_the_output(self, tmp_path: Path):
        plain = _spec_dir(tmp_path, {"s.yaml": ONE}, "plain")
        nasty = _spec_dir(tmp_path, {"s.yaml": ONE}, 'x"""\n__import__("os")\n')
        a, b = tmp_path / "a" / "pkg", tmp_path / "b" / "pkg"
        gen.generate(plain, a)
        gen.generate(nasty, b)
        assert _tree(a) == _tree(b)

    @pytest.mark.parametrize("name", ['x"""y', "my-pkg", "class", "json", "torch", "9lives"])
    def test_an_output_that_cannot_be_a_package_is_refused(self, tmp_path: Path, name: str):
        specs = _spec_dir(tmp_path, {"s.yaml": ONE})
        with pytest.raises(gen.OutputError):
            gen.generate(specs, tmp_path / name)
        assert not (tmp_path / name).exists()

    def test_every_vector_together_generates_nothing_executable(self, tmp_path: Path):
        """Hostile text in every field that reaches generated code, then an import of the whole
        package under an audit hook that fails on any process, exec or file write."""
        hostile = [
            '""" + __import__("os").system("touch PWNED") + """',
            "'''; import os; os.system('touch PWNED') #",
            '\\\\"""\\n\u2028\u2029\x85\x0c\x1e end with a quote"',
            "{{ cycler.__init__.__globals__.os.system('touch PWNED') }} {% raw %}",
            "# -*- coding: rot13 -*-\n\x00\x01\t tab",
        ]
        variants = []
        for i, text in enumerate(hostile):
            for kind in ("channel", "cbam", "eca", "sdpa", "mha"):
                variants.append({"name": f"v{i}_{kind}", "kind": kind, "description": text})
        specs = _spec_dir(
            tmp_path, {"hostile.yaml": yaml.safe_dump({"variants": variants}, allow_unicode=True)}
        )
        out = tmp_path / "hostile_pkg"
        gen.generate(specs, out)
        for path in out.glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:  # module level: imports, the docstring, constants, defs
                assert isinstance(
                    node,
                    ast.Import
                    | ast.ImportFrom
                    | ast.Expr
                    | ast.Assign
                    | ast.AnnAssign
                    | ast.ClassDef
                    | ast.FunctionDef,
                ), (path.name, ast.dump(node)[:80])
                if not isinstance(node, ast.ClassDef | ast.FunctionDef):
                    assert not any(isinstance(n, ast.Call) for n in ast.walk(node)), path.name
        script = textwrap.dedent(
            f"""
            import importlib, sys
            sys.dont_write_bytecode = True  # .pyc caches are the interpreter's writes, not the package's
            blocked = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.fork",
                       "socket.connect", "os.remove", "os.rename", "os.unlink")
            def hook(event, args):
                if event.startswith(blocked):
                    raise RuntimeError(f"blocked {{event}} {{args!r:.80}}")
                if event == "open" and len(args) > 1 and args[1] and any(m in str(args[1]) for m in "wax+"):
                    raise RuntimeError(f"blocked write {{args!r:.80}}")
            sys.path.insert(0, {str(tmp_path)!r})
            sys.addaudithook(hook)
            import hostile_pkg
            for name in hostile_pkg.VARIANTS:
                importlib.import_module("hostile_pkg." + name)
            print("imported", len(hostile_pkg.VARIANTS))
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"imported {len(variants)}" in proc.stdout
        assert not (tmp_path / "PWNED").exists()


# --- 2. Memory and output blow-up -----------------------------------------------------------------------


def _peak(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI in a child and return it with the child's peak RSS in MiB (VmHWM: getrusage's
    ru_maxrss would carry the forking pytest worker's high-water mark across exec)."""
    script = (
        "import runpy, sys; sys.argv = ['attnforge', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('attnforge', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "sys.stderr.write(f'\\nPEAK_KB {hwm}\\n')\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    peak = int(proc.stderr.rsplit("PEAK_KB ", 1)[1].split()[0]) / 1024
    return proc, peak


class TestBudgets:
    def test_matrices_are_counted_across_entries_before_expanding(self, tmp_path: Path):
        entry = (
            "  - name: se_r{reduction}_m{min_channels}_{i}\n    kind: channel\n    matrix:\n"
            f"      reduction: {list(range(1, 101))}\n      min_channels: {list(range(1, 101))}\n"
        )
        text = "variants:\n" + "".join(entry.replace("{i}", f"e{i}") for i in range(480))
        specs = _spec_dir(tmp_path, {"big.yaml": text})
        assert len(text) > 400_000  # the 425 KB file of 4.8 million variants
        proc, peak = _peak(
            ["generate", "--specs", str(specs), "--out", str(tmp_path / "pkg")], tmp_path
        )
        assert proc.returncode == 2
        assert "expands to more than 10000 variants" in proc.stderr
        assert len(proc.stderr) < 64_000 and peak < 400, (len(proc.stderr), peak)
        assert not (tmp_path / "pkg").exists()

    def test_the_run_budget_spans_files_and_has_an_override(self, tmp_path: Path):
        entry = (
            "variants:\n  - name: sp_k{kernel_size}_{gate}_{bias}\n    kind: spatial\n    matrix:\n"
            "      kernel_size: [1, 3, 5]\n      gate: [sigmoid, hard_sigmoid]\n      bias: [true, false]\n"
        )
        specs = _spec_dir(tmp_path, {"a.yaml": entry, "b.yaml": entry.replace("sp_k", "sq_k")})
        with pytest.raises(
            SpecError, match=r"more than 20 variants .* raise the budget with --max-variants"
        ):
            load_specs(specs, budget=Budget(variants=20))
        assert len(load_specs(specs, budget=Budget(variants=24))) == 24
        assert (
            cli.main(
                [
                    "generate",
                    "--specs",
                    str(specs),
                    "--out",
                    str(tmp_path / "p"),
                    "--max-variants",
                    "20",
                ]
            )
            == 2
        )

    def test_a_long_value_in_a_name_pattern_is_refused_once(self, tmp_path: Path):
        value = "x" * 10_000
        text = (
            "variants:\n  - name: se_{activation}{activation}{activation}{activation}\n    kind: channel\n"
            f"    matrix:\n      activation: [{', '.join([value] * 20)}]\n"
        )
        specs = _spec_dir(tmp_path, {"long.yaml": text})
        proc, peak = _peak(
            ["generate", "--specs", str(specs), "--out", str(tmp_path / "pkg")], tmp_path
        )
        assert proc.returncode == 2 and "at most 64" in proc.stderr
        assert len(proc.stderr) < 64_000 and peak < 400, (len(proc.stderr), peak)

    def test_an_aliased_huge_name_prints_a_bounded_report(self, tmp_path: Path):
        name = "n" * 100_000
        text = (
            f"variants:\n  - {{name: &n {name}, kind: channel}}\n"
            + "  - {name: *n, kind: channel}\n" * 4000
        )
        specs = _spec_dir(tmp_path, {"alias.yaml": text})
        proc, peak = _peak(
            ["generate", "--specs", str(specs), "--out", str(tmp_path / "pkg")], tmp_path
        )
        assert proc.returncode == 2
        assert "more problem(s)" in proc.stderr
        assert len(proc.stderr) < 64_000 and peak < 400, (len(proc.stderr), peak)


# --- 3. Silent data loss ----------------------------------------------------------------------------------


class TestNoDataLoss:
    @pytest.fixture
    def specs(self, tmp_path: Path) -> Path:
        return _spec_dir(tmp_path, {"s.yaml": ONE})

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("__init__.py", "# my package\n"),
            ("utils.py", "def helper(): ...\n"),
            (".notes.tmp", "draft\n"),
            ("fake.py", f"{gen.MARKER} from s.yaml, variant fake. DO NOT EDIT.\n# hand-written\n"),
        ],
    )
    def test_a_directory_with_files_of_its_own_is_refused(
        self, specs: Path, tmp_path: Path, name: str, text: str
    ):
        out = tmp_path / "mine"
        out.mkdir()
        (out / name).write_text(text)
        with pytest.raises(gen.OutputError, match="did not write"):
            gen.generate(specs, out)
        assert _tree(out) == {name: text.encode()}

    def test_files_added_beside_a_generated_package_are_refused_and_kept(
        self, specs: Path, tmp_path: Path
    ):
        out = tmp_path / "pkg"
        gen.generate(specs, out)
        (out / "cli.py").write_text("print('mine')\n")
        (out / "sub.py").mkdir()
        before = _tree(out)
        assert cli.main(["generate", "--specs", str(specs), "--out", str(out)]) == 2
        assert _tree(out) == before and (out / "sub.py").is_dir()

    def test_the_harness_package_itself_is_refused(self, specs: Path, tmp_path: Path):
        copy = tmp_path / "harness"
        shutil.copytree(ROOT / "harness", copy, ignore=shutil.ignore_patterns("__pycache__"))
        (specs / "cli.yaml").write_text("variants:\n  - {name: cli, kind: sdpa}\n")
        before = _tree(copy)
        with pytest.raises(gen.OutputError):
            gen.generate(specs, copy)
        assert _tree(copy) == before

    @pytest.mark.parametrize("how", ["empty", "dangling", "directory", "unreadable"])
    def test_a_broken_spec_set_removes_nothing(
        self, specs: Path, tmp_path: Path, how: str, monkeypatch
    ):
        out = tmp_path / "pkg"
        gen.generate(specs, out)
        before = _tree(out)
        spec = specs / "s.yaml"
        spec.unlink()
        if how == "dangling":
            spec.symlink_to(tmp_path / "gone.yaml")
        elif how == "directory":
            spec.mkdir()
        elif how == "unreadable":  # root reads everything: simulate the OS refusing
            spec.write_text(ONE)
            real = Path.read_text

            def refuse(self: Path, *a: object, **k: object) -> str:
                if self.name == "s.yaml":
                    raise PermissionError(13, "Permission denied")
                return real(self, *a, **k)  # type: ignore[arg-type]

            monkeypatch.setattr(Path, "read_text", refuse)
        with pytest.raises(SpecError) as info:
            gen.generate(specs, out)
        assert {
            "empty": "no spec files",
            "dangling": "dangling",
            "directory": "not a regular file",
            "unreadable": "Permission denied",
        }[how] in str(info.value)
        assert _tree(out) == before

    def test_an_unreadable_specs_directory_is_a_positioned_error(
        self, specs: Path, monkeypatch, capsys
    ):
        def refuse(self: Path):  # type: ignore[no-untyped-def]
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "iterdir", refuse)
        assert (
            cli.main(["generate", "--specs", str(specs), "--out", "/nonexistent/pkg", "--check"])
            == 2
        )
        assert "cannot read the directory: Permission denied" in capsys.readouterr().err

    def test_a_failed_write_leaves_the_directory_as_it_was(
        self, specs: Path, tmp_path: Path, monkeypatch
    ):
        out = tmp_path / "pkg"
        gen.generate(specs, out)
        before = _tree(out)
        (specs / "s.yaml").write_text(ONE + "  - {name: se_two, kind: channel}\n")
        real, opened = os.open, []

        def full_disk(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
            if str(path).endswith(".tmp"):
                opened.append(path)
                if len(opened) == 2:
                    raise OSError(28, "No space left on device")
            return real(path, flags, mode, dir_fd=dir_fd)

        monkeypatch.setattr(gen.os, "open", full_disk)
        with pytest.raises(OSError, match="No space"):
            gen.generate(specs, out)
        assert _tree(out) == before  # no half-written catalogue, no module without its index
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    def test_files_honour_the_umask_and_nothing_is_written_outside_out(
        self, specs: Path, tmp_path: Path
    ):
        old = os.umask(0o027)
        try:
            out2 = tmp_path / "pkg2"
            gen.generate(specs, out2)
        finally:
            os.umask(old)
        assert {oct(p.stat().st_mode & 0o777) for p in out2.glob("*.py")} == {"0o640"}
        assert sorted(p.name for p in specs.iterdir()) == ["s.yaml"]  # no schema.json unasked


# --- 4. Concurrency ------------------------------------------------------------------------------------------


def test_two_real_processes_on_one_directory_take_turns(tmp_path: Path):
    entry = (
        "variants:\n  - name: sp_k{kernel_size}_{gate}_{bias}\n    kind: spatial\n    matrix:\n"
        "      kernel_size: [1, 3, 5, 7, 9]\n      gate: [sigmoid, hard_sigmoid]\n      bias: [true, false]\n"
    )
    specs = _spec_dir(tmp_path, {"s.yaml": entry})
    out = tmp_path / "pkg"
    for _ in range(5):
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "attnforge",
                    "generate",
                    "--specs",
                    str(specs),
                    "--out",
                    str(out),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
        assert [r[2] for r in results] == [0, 0], [r[1][-500:] for r in results]
    assert gen.generate(specs, out, check=True).changed == []
    assert len(list(out.glob("*.py"))) == 21
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_run_that_cannot_get_the_lock_says_so(tmp_path: Path):
    specs = _spec_dir(tmp_path, {"s.yaml": ONE})
    out = tmp_path / "pkg"
    gen.generate(specs, out)
    with gen.locked(out), pytest.raises(gen.OutputError, match="another attnforge run"):
        gen.generate(specs, out, lock_timeout=0.2)


# --- 5. Names that validate but would generate broken code -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("f_", "sdpa", "its class F would shadow the module's F"),
        ("f__", "mha", "its class F would shadow the module's F"),
        ("s_p_e_c", "channel", "its class SPEC would shadow the module's SPEC"),
        ("value_error", "channel", "its class ValueError would shadow the module's ValueError"),
        ("nn", "eca", "its class Nn"),  # not a clash: Nn is not nn
        ("none", "channel", "its class name 'None' must not be a Python keyword"),
        ("none_", "channel", "its class name 'None' must not be a Python keyword"),
        ("true_", "sdpa", "its class name 'True' must not be a Python keyword"),
        ("false_", "sdpa", "its class name 'False' must not be a Python keyword"),
    ],
)
def test_class_names_that_shadow_are_positioned_errors(
    tmp_path: Path, name: str, kind: str, message: str
):
    specs = _spec_dir(tmp_path, {"n.yaml": f"variants:\n  - name: {name}\n    kind: {kind}\n"})
    if name == "nn":
        gen.generate(specs, tmp_path / "pkg")  # builds and imports: Nn shadows nothing
        return
    with pytest.raises(SpecError) as info:
        gen.generate(specs, tmp_path / "pkg")
    assert "n.yaml:2:" in str(info.value) and message in str(info.value)
    assert not (tmp_path / "pkg").exists()


# --- 6. Tracebacks instead of positioned errors -------------------------------------------------------------


class TestNoTracebacks:
    def test_a_spec_file_name_that_is_not_utf8(self, tmp_path: Path):
        specs = tmp_path / "specs"
        specs.mkdir()
        fd = os.open(os.fsencode(specs) + b"/bad\xff.yaml", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, ONE.encode())
        os.close(fd)
        proc = _run("generate", "--specs", str(specs), "--out", str(tmp_path / "pkg"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "\\udcff" in proc.stderr and "rename it" in proc.stderr

    @pytest.mark.parametrize("what", ["file", "dangling"])
    def test_an_out_that_is_not_a_directory(self, tmp_path: Path, what: str):
        specs = _spec_dir(tmp_path, {"s.yaml": ONE})
        out = tmp_path / "pkg"
        if what == "file":
            out.write_text("x")
        else:
            out.symlink_to(tmp_path / "nowhere")
        proc = _run("generate", "--specs", str(specs), "--out", str(out))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert ("not a directory" if what == "file" else "dangling") in proc.stderr

    def test_sweep_out_that_is_a_file_and_a_sweep_that_matches_nothing(self, tmp_path: Path):
        (tmp_path / "results").write_text("x")
        proc = _run("sweep", "--out", "results", cwd=tmp_path)
        assert proc.returncode == 2 and "exists and is not a directory" in proc.stderr
        proc = _run("sweep", "--out", "r", "--variants", "nothing_*", cwd=tmp_path)
        assert proc.returncode == 5 and "no variant matches --variants 'nothing_*'" in proc.stderr
        assert "Traceback" not in proc.stderr


# --- 8. Output does not depend on how a path is spelled -----------------------------------------------------


def test_output_is_the_same_however_the_paths_are_spelled(tmp_path: Path):
    specs = _spec_dir(tmp_path, {"s.yaml": ONE, "t.yml": "variants:\n  - {name: sd, kind: sdpa}\n"})
    link = tmp_path / "linked"
    link.symlink_to(specs)
    canonical = tmp_path / "c" / "pkg"
    gen.generate(specs, canonical)
    spelled = tmp_path / "d" / "pkg"
    spelled.mkdir(parents=True)
    assert _run("generate", "--specs", ".", "--out", str(spelled), cwd=specs).returncode == 0
    assert _tree(spelled) == _tree(canonical)
    again = tmp_path / "e" / "pkg"
    again.mkdir(parents=True)
    assert _run("generate", "--specs", str(link), "--out", ".", cwd=again).returncode == 0
    assert _tree(again) == _tree(canonical)


# --- 10. A sweep run from another directory ---------------------------------------------------------------


def test_a_sweep_started_elsewhere_writes_where_it_was_asked(tmp_path: Path):
    _spec_dir(
        tmp_path, {"s.yaml": "variants:\n  - {name: tiny_sp, kind: spatial, kernel_size: 1}\n"}
    )
    proc = _run(
        "sweep",
        "--specs",
        "specs",
        "--out",
        "rel",
        "-n",
        "0",
        "--",
        "--attnforge-checks",
        "shape",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "rel" / "summary.md").is_file()
    assert "1 variants" in (tmp_path / "rel" / "summary.md").read_text()
