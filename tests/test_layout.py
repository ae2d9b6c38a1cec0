"""The package imports from a plain source tree (no install), with the kernels inside it."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_import_as_pbs_tune_kernels_from_the_source_tree(tmp_path):
    code = ("import importlib.util, pbs_tune.kernels, pbs_tune.models.fixtures; "
            "print(pbs_tune.kernels.__file__); print(importlib.util.find_spec('kernels'))")
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONNOUSERSITE="1")
    out = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.extend(%r); " % [
        p for p in sys.path if p.endswith("site-packages")] + code], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == os.path.join(ROOT, "pbs_tune", "kernels", "__init__.py")
    assert out[1] == "None"  # never a top-level module `kernels`


# DESIGN.md: imports only run downwards (cli, bench -> tune -> runtime -> op -> kernels; tune ->
# models); every part may use the leaf modules. A part may import parts of a lower rank only.
RANK = dict(kernels=0, op=1, runtime=2, models=2, tune=3, cli=4, bench=4, __init__=5, __main__=5)
LEAVES = {"timing", "progress", "seqlen", "dtypes", "configs", "cache"}


def _imported_parts(path, part):
    """The pbs_tune parts (first name below pbs_tune) that a source file imports."""
    import ast
    rel = os.path.relpath(path, os.path.join(ROOT, "pbs_tune")).split(os.sep)
    package = ["pbs_tune"] + rel[:-1]  # the package the file is in
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            names = target[1:2] or [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pbs_tune"):
            names = node.module.split(".")[1:2] or [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("pbs_tune.")]
        else:
            continue
        found |= {n for n in names if n != part}
    return found


def test_imports_only_run_down_the_layers_design_md_states():
    wrong = []
    for folder, _, files in os.walk(os.path.join(ROOT, "pbs_tune")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.join(ROOT, "pbs_tune")).split(os.sep)
            part = rel[0][:-3] if len(rel) == 1 else rel[0]
            if part in LEAVES:
                assert _imported_parts(path, part) <= LEAVES, path  # a leaf uses only leaves
                continue
            for other in _imported_parts(path, part) - LEAVES:
                if RANK[other] >= RANK[part]:
                    wrong.append(f"{'/'.join(rel)} imports {other}")
    assert not wrong, wrong
