"""The stages depend on each other one way: checked on the source, and at run time for serving.

The static check reads every ``import`` in ``distill/`` and ``serve/`` (function-level ones
included, since a lazy import is still a dependency) and maps each to its stage, the first
folder under ``distill`` (``distill.infer.predictor`` -> ``infer``). The same check runs from
the command line::

    python -m pytest tests/unit/test_layering.py
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: stage -> the stages it may import. Anything else is a layering error. ``cli``, ``demo`` and
#: ``__main__`` sit on top and may use everything.
ALLOWED = {
    "errors": set(),
    "core": {"errors"},
    "data": {"core", "errors"},
    "eval": {"core", "data", "errors"},
    "students": {"core", "errors"},
    "losses": {"core", "errors"},
    "package": {"core", "data", "errors", "students"},
    "infer": {"core", "data", "errors", "package", "students"},
    "cache": {"core", "data", "errors"},
    "teacher": {"cache", "core", "data", "errors", "eval"},
    "export": {"cache", "core", "data", "errors", "infer", "package", "students"},
    "train": {"cache", "core", "data", "errors", "eval", "infer", "losses", "students", "teacher"},
    "serve": {"core", "data", "errors", "infer", "package"},
    "report": {"core", "data", "errors"},
}
TOP = {"cli", "cli_infer", "demo", "__main__", "__init__"}
#: ``distill/__init__.py`` holds only the version, which every stage may record.
EVERYONE_MAY_IMPORT = {"__init__"}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "serve":
        return "serve"
    if parts[0] != "distill":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names.add(base)
    return names


def stage_edges() -> dict[tuple[str, str], list[str]]:
    """``(importing stage, imported stage) -> files`` over the whole source tree."""
    edges: dict[tuple[str, str], list[str]] = {}
    for root in ("distill", "serve"):
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            source = stage_of(module)
            package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
            for name in imports_of(path, package):
                target = stage_of(name)
                if target and source and target != source:
                    edges.setdefault((source, target), []).append(str(path.relative_to(REPO_ROOT)))
    return edges


def find_cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
            if not state.get(nxt):
                found = visit(nxt, trail + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_stage_imports_a_stage_it_must_not():
    wrong = {
        f"{source} -> {target}": files
        for (source, target), files in stage_edges().items()
        if source not in TOP and target not in ALLOWED.get(source, set()) | EVERYONE_MAY_IMPORT
    }
    assert not wrong, f"layering violations (stage -> stage: files): {wrong}"


def test_there_is_no_import_loop_between_stages():
    edges = {edge for edge in stage_edges() if edge[0] not in TOP and edge[1] not in EVERYONE_MAY_IMPORT}
    assert find_cycle(edges) is None, f"import loop between stages: {' -> '.join(find_cycle(edges))}"


def test_the_checker_sees_loops_and_lazy_imports(tmp_path):
    # Hand-made graph and file: the check itself must be able to fail.
    assert find_cycle({("a", "b"), ("b", "c"), ("c", "a")}) is not None
    assert find_cycle({("a", "b"), ("b", "c")}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from distill.export.run import x\n    from . import sibling\n")
    assert imports_of(source, "distill.infer") == {"distill.export.run", "distill.infer"}


FORBIDDEN_AT_RUN_TIME = ("distill.train", "distill.teacher", "distill.cache", "distill.export", "distill.losses",
                         "nnunetv2", "zarr", "monai", "ray", "onnx", "torchvision")  # fmt: skip


@pytest.mark.slow
def test_segmenting_with_onnxruntime_imports_no_training_code(tmp_path):
    """Open a package and segment a case with onnxruntime in a fresh interpreter whose import
    system refuses training, teacher, cache, export, nnU-Net, zarr, MONAI, Ray and onnx."""
    from distill.export.run import ExportConfig, export_package
    from distill.train.chain import save_untrained_student

    package = tmp_path / "pkg"
    export_package(ExportConfig(run_dir=save_untrained_student(tmp_path / "run", 30_000), out=package, n_phantoms=1))
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        FORBIDDEN = {FORBIDDEN_AT_RUN_TIME!r}

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    raise ImportError(f"refused at run time: {{name}}")
                return None

        sys.meta_path.insert(0, Refuse())
        import numpy as np
        from distill.infer.predictor import Predictor

        predictor = Predictor.from_package({str(package)!r}, "onnxruntime", threads=1)
        rng = np.random.default_rng(0)
        images = np.zeros((4, 40, 44, 36), np.float32)
        images[:, 6:34, 6:38, 6:30] = rng.normal(100, 20, (4, 28, 32, 24))
        affine = np.diag([1.2, -1.0, 1.5, 1.0]); affine[:3, 3] = (10, -5, 3)
        result = predictor.segment(images, affine)
        assert result.labels.shape == (40, 44, 36), result.labels.shape
        loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
        assert not loaded, loaded
        print("segmented", result.labels.dtype)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "segmented" in done.stdout


def readme_layout_entries() -> set[str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    entries, parent = set(), ""
    for line in block.splitlines():
        if not line.strip():
            continue
        name = line.split()[0]
        if not line.startswith(" "):
            parent = name if name.endswith("/") and len(line.split()) == 1 else ""
            entries.add(name.rstrip("/"))
        else:
            entries.add((parent + name).rstrip("/"))
    return entries


def test_the_readme_layout_lists_every_source_folder_and_nothing_else():
    folders = {
        str(path.parent.relative_to(REPO_ROOT))
        for root in ("distill", "serve")
        for path in (REPO_ROOT / root).rglob("__init__.py")
        if "routes" not in path.parts  # sub-packages of serve are part of the service
    }
    folders |= {"distill/cli.py", "benchmarks"}
    folders |= {str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "tests").iterdir()
                if path.is_dir() and any(path.glob("test_*.py"))}  # fmt: skip
    listed = readme_layout_entries()
    assert folders - listed == set(), f"folders missing from the README's layout: {sorted(folders - listed)}"
    assert listed - folders - {"distill"} == set(), (
        f"README lists folders that do not exist: {sorted(listed - folders)}"
    )
