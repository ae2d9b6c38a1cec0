"""Profile files (atomic merged writes, malformed input) and the compiled-kernel cache manifest."""
import json
import multiprocessing as mp
import os
import subprocess
import sys

import pytest
import yaml

from pbs_tune.runtime import kernel_cache
from pbs_tune.runtime import profiles


def entry(seqlen, gpu="h100", thr=0.9):
    return dict(gpu=gpu, seqlen=seqlen, heads=32, kv_heads=8, head_dim=128, dtype="bfloat16",
                params=dict(block_size=128, segment_size=256, threshold=thr),
                launch=dict(block_m=128, block_n=128, num_warps=8, num_stages=3))


def test_merge_adds_and_replaces_by_key(tmp_path):
    path = str(tmp_path / "h100.yaml")
    profiles.merge_entries(path, [entry(32768), entry(8192)])
    profiles.merge_entries(path, [entry(32768, thr=0.8), entry(131072)])
    prof = profiles.load(path)
    assert [e.seqlen for e in prof.entries] == [8192, 32768, 131072]
    assert prof.pick(40000, gpu="h100", heads=32, kv_heads=8, head_dim=128, dtype="bfloat16").params.threshold == 0.8
    assert yaml.safe_load(open(path))["schema_version"] == profiles.SCHEMA_VERSION


def _add(path, n):
    profiles.merge_entries(path, [entry(n)])


def test_concurrent_writers_lose_no_entry(tmp_path):
    path = str(tmp_path / "h100.yaml")
    procs = [mp.get_context("spawn").Process(target=_add, args=(path, 1024 * (i + 1))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(e.seqlen for e in profiles.load(path).entries) == [1024, 2048, 3072, 4096]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "h100.yaml")
    profiles.merge_entries(path, [entry(8192)])
    before = open(path).read()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(profiles.yaml, "safe_dump", boom)
    with pytest.raises(OSError, match="disk full"):
        profiles.merge_entries(path, [entry(16384)])
    assert open(path).read() == before
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_malformed_yaml_is_reported_with_its_line_and_never_overwritten(tmp_path):
    path = tmp_path / "h100.yaml"
    text = "schema_version: 1\nentries:\n- gpu: h100\n  seqlen: [8192\n"
    path.write_text(text)
    with pytest.raises(profiles.ProfileError, match=r"h100.yaml:\d+: not valid YAML"):
        profiles.merge_entries(str(path), [entry(8192)])
    assert path.read_text() == text


@pytest.mark.parametrize("text,match", [
    ("schema_version: 99\nentries: []\n", "schema_version 99"),
    ("- just\n- a list\n", "expected a mapping"),
    ("schema_version: 1\nentries:\n- gpu: h100\n", "entry 0 lacks seqlen"),
])
def test_schema_problems_are_clear(tmp_path, text, match):
    path = tmp_path / "h100.yaml"
    path.write_text(text)
    with pytest.raises(profiles.ProfileError, match=match):
        profiles.load(str(path))


def _fake_cache(root):
    path = kernel_cache.cache_dir("h100", str(root))
    os.makedirs(os.path.join(path, "triton", "abc"))
    with open(os.path.join(path, "triton", "abc", "_attend_fwd.cubin"), "wb") as f:
        f.write(os.urandom(64))
    kernel_cache.write_manifest(path, [profiles.ProfileEntry.from_dict(entry(8192))])
    return path


def test_cache_manifest_detects_corruption_and_staleness(tmp_path):
    path = _fake_cache(tmp_path)
    assert kernel_cache.check(path) is None
    with open(os.path.join(path, "triton", "abc", "_attend_fwd.cubin"), "ab") as f:
        f.write(b"x")
    assert "corrupted" in kernel_cache.check(path)
    path = _fake_cache(tmp_path / "b")
    manifest = json.load(open(os.path.join(path, kernel_cache.MANIFEST)))
    manifest["triton"] = "0.0.1"
    json.dump(manifest, open(os.path.join(path, kernel_cache.MANIFEST), "w"))
    assert "built by triton 0.0.1" in kernel_cache.check(path)
    manifest["triton"] = kernel_cache.triton.__version__
    manifest["kernels"] = "0" * 64
    json.dump(manifest, open(os.path.join(path, kernel_cache.MANIFEST), "w"))
    assert kernel_cache.check(path) == "built from other kernel sources"
    open(os.path.join(path, kernel_cache.MANIFEST), "w").write("{not json")
    assert "unreadable manifest" in kernel_cache.check(path)


AOT = """
from pbs_tune.kernels.aot import compile_attend
for arch in (80, 90):
    k = compile_attend(arch=arch, dtype="bfloat16", head_dim=128, block_size=128, block_m=128, block_n=128,
                       num_warps=8, num_stages=2)
    ptx = k.asm["ptx"]
    print(arch, "wgmma" in ptx, "mma.sync" in ptx)
"""


def test_attend_kernel_compiles_ahead_of_time_for_a100_and_h100():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", AOT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert "80 False True" in lines  # Ampere: mma.sync, no Hopper-only instructions
    assert "90 True False" in lines  # Hopper: wgmma


def test_run_entry_once_runs_the_whole_op_for_an_entry():
    e = dict(gpu="cpu", seqlen=64, heads=2, kv_heads=1, head_dim=64, dtype="float32",
             params=dict(block_size=16, segment_size=32, threshold=0.8),
             launch=dict(block_m=16, block_n=16, num_warps=4, num_stages=1))
    kernel_cache.run_entry_once(profiles.ProfileEntry.from_dict(e), 50, device="cpu")  # odd length, interpreter: must not raise
