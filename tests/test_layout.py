"""The package imports from a plain source tree (no install), with the kernels inside it, and installs
no top-level module but `pbs_tune` (other packages may well have one named `kernels`)."""
import importlib.metadata
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = [p for p in sys.path if p.endswith("site-packages")]


def _run_from_source_tree(tmp_path, code):
    """`code` in a fresh interpreter that finds pbs_tune only through PYTHONPATH=<checkout> (-S: no
    .pth files, so not the editable install), with the environment's other packages."""
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONNOUSERSITE="1")
    return subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.extend({SITE!r}); " + code],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split("\n")


def test_kernels_import_as_pbs_tune_kernels_from_the_source_tree(tmp_path):
    out = _run_from_source_tree(tmp_path, "import pbs_tune.kernels, pbs_tune.models.fixtures; "
                                          "print(pbs_tune.kernels.__file__)")
    assert out[0] == os.path.join(ROOT, "pbs_tune", "kernels", "__init__.py")


def test_shipped_profiles_load_from_the_source_tree(tmp_path):
    """Not installed, the shipped store is the checkout's configs/ and cache/ (installed, they are
    pbs_tune.configs and pbs_tune.cache)."""
    out = _run_from_source_tree(tmp_path, "import pbs_tune; p = pbs_tune.load_profile('h100-sxm'); "
                                          "print(p.path); print(p.library)")
    assert out[0] == os.path.join(ROOT, "configs", "h100-sxm.yaml")
    assert out[1] == os.path.join(ROOT, "cache", "sm_90")


def test_the_package_installs_no_top_level_module_but_pbs_tune():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setup = tomllib.load(f)["tool"]["setuptools"]
    assert all(p == "pbs_tune" or p.startswith("pbs_tune.") for p in setup["packages"])
    assert all(p.startswith("pbs_tune.") for p in setup["package-dir"] if p != "pbs_tune")
    installed = importlib.metadata.distribution("pbs-tune").read_text("top_level.txt")
    assert installed.split() == ["pbs_tune"]


def test_every_shipped_kernel_library_is_a_package_with_its_files_as_data():
    """A cache/sm_* folder not listed would ship only with a setuptools warning (or not at all)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setup = tomllib.load(f)["tool"]["setuptools"]
    shipped = sorted(d for d in os.listdir(os.path.join(ROOT, "cache")) if d.startswith("sm_"))
    assert shipped and all(f"pbs_tune.cache.{d}" in setup["packages"] for d in shipped)
    assert all(setup["package-data"][f"pbs_tune.cache.{d}"] == ["manifest.json", "*.cubin"] for d in shipped)


# DESIGN.md: imports only run downwards (cli, bench -> tune -> runtime -> measure -> op -> kernels ->
# profile; tune -> models); every part may use the leaf modules. A part may import parts of a lower
# rank only. A bare `import pbs_tune` inside the package is the top (__init__) and never allowed.
RANK = dict(profile=0, kernels=1, op=2, measure=3, runtime=4, models=4, tune=5, cli=6, bench=6, __init__=7,
            __main__=7)
LEAVES = {"progress", "seqlen", "dtypes", "configs", "cache"}


def _imported_parts(path, part):
    """The pbs_tune parts (first name below pbs_tune) that a source file imports."""
    import ast
    rel = os.path.relpath(path, os.path.join(ROOT, "pbs_tune")).split(os.sep)
    package = ["pbs_tune"] + rel[:-1]  # the package the file is in
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            names = target[1:2] or [a.name if a.name in RANK or a.name in LEAVES else "__init__" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pbs_tune"):
            names = node.module.split(".")[1:2] or [a.name if a.name in RANK or a.name in LEAVES else "__init__"
                                                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [(a.name.split(".") + ["__init__"])[1] for a in node.names if a.name.split(".")[0] == "pbs_tune"]
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


def test_the_command_and_the_package_import_without_torch(tmp_path):
    """`pbs-tune --help` and `import pbs_tune` load torch only when something needs it (PEP 562)."""
    out = _run_from_source_tree(tmp_path, "import pbs_tune, pbs_tune.cli; "
                                          "from click.testing import CliRunner; "
                                          "r = CliRunner().invoke(pbs_tune.cli.main, ['--help']); "
                                          "print(r.exit_code, 'torch' in sys.modules, 'triton' in sys.modules); "
                                          "pbs_tune.LaunchConfig; print('torch' in sys.modules); "
                                          "pbs_tune.pbs_attention; print('torch' in sys.modules)")
    assert out[:3] == ["0 False False", "False", "True"]
    import pbs_tune
    assert all(callable(getattr(pbs_tune, name)) for name in pbs_tune.__all__)  # every public name resolves
    assert set(pbs_tune.__all__) <= set(dir(pbs_tune))


def test_shipped_profiles_name_no_path_of_the_machine_that_made_them():
    import re
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.endswith(".yaml"):
            text = open(os.path.join(ROOT, "configs", name)).read()
            assert not re.search(r"(^|[\s:'\"])/(tmp|home|root|work|mnt|opt|data|Users)/", text, re.M), name
