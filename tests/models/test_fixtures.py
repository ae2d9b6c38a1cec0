"""Real-attention fixtures: the packaged SmolLM2 (where its extra is installed) and the text split."""
import dataclasses
import hashlib
import os

import pytest
from click.testing import CliRunner

from pbs_tune.cli import main
from pbs_tune.models import fixtures, packaged


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
    monkeypatch.setitem(packaged.PACKAGED, "smollm2", dataclasses.replace(packaged.SMOLLM2,
                                                                          packages=("no_such_package_here",)))
    with pytest.raises(ValueError, match="pip install 'pbs-tune\\[smollm2\\]'"):
        fixtures.smollm2_files()


def _part_packages(root, parts):
    """Packages part1..partN under `root` (on sys.path), each holding data/partNN.bin: what the Qwen
    model's packages look like, at a few bytes."""
    for i, data in enumerate(parts, 1):
        folder = root / f"fake_parts_{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"part{i:02d}.bin").write_bytes(data)
    return packaged.PackagedModel("fake-model", "fake.gguf", tuple(f"fake_parts_{i}" for i in range(1, len(parts) + 1)),
                                  tuple(f"data/part{i:02d}.bin" for i in range(1, len(parts) + 1)),
                                  install="pip install 'pbs-tune[fake]'", size=sum(map(len, parts)),
                                  md5=hashlib.md5(b"".join(parts)).hexdigest())


def test_a_model_in_parts_is_joined_once_into_the_store_and_checked(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = _part_packages(tmp_path / "site", [b"GGUF" + bytes(100), bytes(range(256)), b"end"])
    folder, name = model.folder_and_file(str(tmp_path / "store"))
    joined = os.path.join(folder, name)
    assert folder == str(tmp_path / "store" / "models" / "fake-model")
    assert open(joined, "rb").read() == b"GGUF" + bytes(100) + bytes(range(256)) + b"end"
    before = os.stat(joined).st_mtime_ns
    assert model.folder_and_file(str(tmp_path / "store")) == (folder, name)  # joined once
    assert os.stat(joined).st_mtime_ns == before
    assert packaged.QWEN_CODER.parts[-1] == "data/part06.bin" and packaged.QWEN_CODER.size == 491_400_064


def test_missing_or_damaged_parts_are_one_line_and_nothing_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = _part_packages(tmp_path / "site", [b"a" * 10, b"b" * 10])
    store = tmp_path / "store"
    (tmp_path / "site" / "fake_parts_2" / "data" / "part02.bin").write_bytes(b"b" * 9 + b"c")  # same size, other bytes
    with pytest.raises(ValueError, match="MD5 is .* a part is damaged; reinstall them with: pip install 'pbs-tune"):
        model.folder_and_file(str(store))
    (tmp_path / "site" / "fake_parts_2" / "data" / "part02.bin").write_bytes(b"b" * 5)
    with pytest.raises(ValueError, match="hold 15 bytes, not the model's 20"):
        model.folder_and_file(str(store))
    assert not [p for p in (store / "models" / "fake-model").iterdir()] if (store / "models").exists() else True
    missing = dataclasses.replace(model, packages=("fake_parts_1", "no_such_part"))
    with pytest.raises(ValueError, match="no-such-part holding its parts are not installed; install them with"):
        missing.folder_and_file(str(store))
    res = CliRunner().invoke(main, ["capture", "--model", "qwen2.5-coder-0.5b", "--text", __file__, "--seqlen", "64",
                                    "--out", str(tmp_path / "x.safetensors")], env={"PBS_TUNE_HOME": str(store)})
    if "not installed" in res.output:  # the parts are not installed here: the line says how to get them
        assert res.exit_code == 1 and "pip install 'pbs-tune[qwen]'" in res.output and "Traceback" not in res.output


def test_head_dim_comes_from_the_config_or_from_hidden_size_over_heads():
    from types import SimpleNamespace
    from pbs_tune.models.fixtures import head_dim_of
    assert head_dim_of(SimpleNamespace(head_dim=128, hidden_size=896, num_attention_heads=14)) == 128
    assert head_dim_of(SimpleNamespace(hidden_size=896, num_attention_heads=14)) == 64  # Qwen2 in transformers 5.17
