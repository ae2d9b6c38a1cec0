"""Real-attention fixtures: the packaged SmolLM2 (where its extra is installed) and the text split."""
import pytest
from click.testing import CliRunner

from pbs_tune.cli import main
from pbs_tune.models import fixtures


def test_python_sources_split_by_package_is_deterministic_and_disjoint():
    roles = {role: fixtures.python_sources(role) for role in fixtures.ROLES}
    assert all(roles.values())
    assert roles["evaluation"] == fixtures.python_sources("evaluation")
    packages = {role: {f.split("site-packages/")[1].split("/")[0] for f in files} for role, files in roles.items()}
    assert not packages["calibration"] & packages["evaluation"]
    assert not packages["train"] & (packages["calibration"] | packages["evaluation"])
    with pytest.raises(ValueError, match="role must be one of"):
        fixtures.python_sources("test")


def _smollm2_or_skip():
    try:
        return fixtures.smollm2_files()
    except ValueError as exc:
        pytest.skip(str(exc))  # says how to install the extra


def test_capture_reads_the_packaged_smollm2_through_gguf(tmp_path):
    _smollm2_or_skip()
    (tmp_path / "code.py").write_text("def add(a, b):\n    return a + b\n" * 40)
    out = tmp_path / "smol.safetensors"
    res = CliRunner().invoke(main, ["capture", "--model", "smollm2", "--text", str(tmp_path / "code.py"),
                                    "--seqlen", "96", "--layers", "0,29", "--out", str(out), "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file
    t = load_file(out)
    assert t["layer000.q"].shape == (9, 96, 64) and t["layer029.k"].shape == (3, 96, 64)


def test_missing_smollm2_says_how_to_install(monkeypatch):
    monkeypatch.setattr(fixtures, "_SMOLLM2_PACKAGE", "no_such_package_here")
    with pytest.raises(ValueError, match="pip install 'pbs-tune\\[smollm2\\]'"):
        fixtures.smollm2_files()
