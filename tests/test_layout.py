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
