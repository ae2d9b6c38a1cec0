"""The compiled-kernel library: manifest round trip, relocation, read-only use, corruption.

The kernels are compiled ahead of time for sm_90 on this CPU machine (Triton needs no GPU
to compile), in a subprocess without the interpreter; binding and launching need a GPU
and are measured on one (benchmarks/results/*aot*).
"""
import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from pbs_tune.kernels import launch
from pbs_tune.runtime import exercise, library_bind, library_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUILD = """
import json, os, sys
from pbs_tune.kernels import launch
from pbs_tune.kernels.aot import attend_call, compile_call
from pbs_tune.runtime import exercise, library_bind, library_check, library_write
calls = [attend_call(dtype="bfloat16", head_dim=128, block_size=128, block_m=128, block_n=128, num_warps=8,
                     num_stages=2),
         attend_call(dtype="float16", head_dim=64, block_size=64, block_m=64, block_n=32, num_warps=4, num_stages=3),
         attend_call(dtype="bfloat16", head_dim=128, block_size=128, block_m=128, block_n=128, num_warps=8,
                     num_stages=3, tma=True)]
compiled = [compile_call(c, arch=90) for c in calls]
manifest = library_write.write(sys.argv[1], compiled, dict(triton="test"))
keys = [list(map(str, launch.call_key(c.fn, c.args, c.constexprs, c.num_warps, c.num_stages))) for c in calls]
recs = [list(map(str, library_check.record_key(r))) for r in manifest["kernels"]]
# One library per arch, shared: a second profile's kernels are added to the first's ...
shared = sys.argv[1] + "-shared"
library_write.write(shared, compiled[:2], dict(triton="test"))
union = library_write.write(shared, compiled[1:], dict(triton="test"))
# ... unless the library was built from other kernel sources: then it is replaced.
with open(shared + "/manifest.json") as f:
    old = json.load(f)
with open(shared + "/manifest.json", "w") as f:
    json.dump(dict(old, kernel_sources="0" * 64), f)
fresh = library_write.write(shared, compiled[:1], dict(triton="test"))
print(json.dumps(dict(same_keys=sorted(keys) == sorted(recs),
                      union=[r["file"] for r in union["kernels"]] == [r["file"] for r in manifest["kernels"]],
                      fresh=[r["file"] for r in fresh["kernels"]]
                      == [r["file"] for r in library_bind.read(shared)["kernels"]],
                      fresh_count=len(fresh["kernels"]),
                      files=sorted(os.listdir(shared)) == sorted(["manifest.json"] + list(fresh["files"])))))
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lib") / "h100-sxm")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", BUILD, path], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return path, json.loads(out.stdout.strip().splitlines()[-1])


def test_manifest_records_what_a_launch_needs_and_no_ir(library):
    path, result = library
    assert result["same_keys"]  # a call finds the kernel compiled for it
    manifest = library_bind.read(path)
    assert manifest["arch"] == 90 and manifest["kernel_sources"] == library_bind.kernel_sources_hash()
    assert sorted(os.listdir(path)) == sorted(["manifest.json"] + list(manifest["files"]))
    assert all(name.endswith(".cubin") for name in manifest["files"])
    hopper = [r for r in manifest["kernels"] if r["kernel"] == "_attend_fwd_tma"]
    big, small = sorted([r for r in manifest["kernels"] if r not in hopper], key=lambda r: -r["threads"])
    assert (big["kernel"], big["symbol"], big["threads"], big["num_warps"]) == ("_attend_fwd", "_attend_fwd", 256, 8)
    # The Hopper kernel builds its tensor descriptors in global scratch: the launcher must allocate it.
    (tma,) = hopper
    assert tma["threads"] == 256 and tma["scratch"] and tma["scratch"][0][0] > 0
    assert small["threads"] == 128 and dict(small["constexprs"])["HEAD_DIM"] == 64
    names = [s[0] for s in big["signature"]]
    assert names[:9] == ["Q", "K", "V", "POS", "O", "LSE", "KV_COUNT", "KV_FULL", "KV_IDX"]
    assert ("N" in names) and ("HEAD_DIM" not in names)
    assert dict((s[0], s[1]) for s in big["signature"])["Q"] == "*bf16"
    assert big["shared"] > 0 and len(big["scratch"]) <= 2
    with open(os.path.join(path, big["file"]), "rb") as f:
        assert f.read(4) == b"\x7fELF"  # a cubin


def test_a_library_is_shared_by_profiles_of_one_arch_and_replaced_when_stale(library):
    _, result = library
    assert result["union"]  # two writes with overlapping kernels hold each once
    # stale: only the new kernel, no leftovers
    assert result["fresh"] and result["fresh_count"] == 1 and result["files"]


def test_the_shipped_h100_and_h200_profiles_share_one_sm_90_library():
    from pbs_tune.profile import store as profile_store, profiles
    libraries = {profiles.load(profile_store.find_profile(gpu).path).library for gpu in ("h100-sxm", "h200-sxm")}
    assert len(libraries) == 1 and os.path.basename(libraries.pop()) == "sm_90"


def test_relocated_and_read_only_copies_work_and_stay_untouched(library, tmp_path):
    path, _ = library
    copy = str(tmp_path / "elsewhere" / "h100-sxm")
    shutil.copytree(path, copy)
    for dirpath, _, files in os.walk(copy):
        for name in files:
            os.chmod(os.path.join(dirpath, name), stat.S_IRUSR | stat.S_IRGRP)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR)
    before = {n: os.stat(os.path.join(copy, n)).st_mtime_ns for n in os.listdir(copy)}
    try:
        assert library_bind.read(copy)["kernels"] == library_bind.read(path)["kernels"]
        assert "no CUDA GPU" in library_bind.problem_with(library_bind.read(copy))
        assert {n: os.stat(os.path.join(copy, n)).st_mtime_ns for n in os.listdir(copy)} == before
    finally:
        os.chmod(copy, 0o755)


def _copy(library, tmp_path):
    dst = str(tmp_path / "lib")
    shutil.copytree(library[0], dst)
    return dst, library_bind.read(dst)


def test_a_corrupted_cubin_is_detected_and_never_used(library, tmp_path):
    path, manifest = _copy(library, tmp_path)
    name = manifest["kernels"][0]["file"]
    with open(os.path.join(path, name), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(library_bind.LibraryError, match="corrupted"):
        library_bind.read(path)
    with pytest.raises(library_bind.LibraryError, match="corrupted"):
        library_bind.bind(path)


@pytest.mark.parametrize("damage,match", [
    (lambda p, m: os.remove(os.path.join(p, m["kernels"][0]["file"])), "is missing"),
    (lambda p, m: open(os.path.join(p, "manifest.json"), "w").write("{not json"), "unreadable"),
    (lambda p, m: json.dump(dict(m, format=99), open(os.path.join(p, "manifest.json"), "w")), "not a format-1"),
    (lambda p, m: os.remove(os.path.join(p, "manifest.json")), "no kernel library"),
])
def test_missing_or_damaged_files_are_one_clear_error(library, tmp_path, damage, match):
    path, manifest = _copy(library, tmp_path)
    damage(path, manifest)
    with pytest.raises(library_bind.LibraryError, match=match):
        library_bind.read(path)


def test_the_library_collects_every_kernel_pbs_tune_launches():
    """A kernel launched through `launch.run` but missing here would always run through the JIT."""
    import re
    folder = os.path.dirname(library_bind.launch.__file__)
    launched = set()
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                launched |= set(re.findall(r"\brun\((_\w+),", f.read()))
    assert launched and launched == {fn.__name__ for fn in library_check.launched_kernels()}


def test_a_library_from_other_kernel_sources_is_stale(library, monkeypatch):
    manifest = library_bind.read(library[0])
    monkeypatch.setattr(library_bind, "kernel_sources_hash", lambda: "0" * 64)
    assert "other kernel sources" in library_bind.problem_with(manifest)


def test_kernels_compile_ahead_of_time_for_every_shipped_arch():
    code = """
from pbs_tune.kernels.aot import compile_attend
for arch in (80, 89, 90, 100):
    k = compile_attend(arch=arch, dtype="bfloat16", head_dim=128, block_size=128, block_m=128, block_n=64,
                       num_warps=4, num_stages=2)
    ptx = k.asm["ptx"]
    print(arch, "wgmma" in ptx, "mma.sync" in ptx, "tcgen05" in ptx)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert "80 False True False" in lines  # Ampere: mma.sync, no Hopper-only instructions
    assert "89 False True False" in lines  # Ada: the same
    assert "90 True False False" in lines  # Hopper: wgmma
    assert "100 False False True" in lines  # Blackwell: tcgen05 (built here, never run: no such GPU was lent)


SHIPPED = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


@pytest.mark.parametrize("gpu", SHIPPED)
def test_every_call_a_shipped_profile_makes_finds_its_kernel_and_the_launcher_fits_it(gpu):
    """The interpreter makes every call the profile's entries make (the library's exercise), keyed as
    Triton's JIT keys them (cross_build.py); each must be in the profile's library, built for its GPU's
    arch from the kernel sources installed, and what the launcher would hand that cubin (library_check:
    count, order, size and the value of every argument by name, scratch pointers) must be what the
    cubin's parameter table takes. Any edit of a kernel makes the libraries stale: rebuild them with
    `pbs-tune compile --profile configs/<gpu>.yaml` (on a GPU for its own arch, anywhere for another)."""
    from pbs_tune.profile import profiles
    from pbs_tune.profile.target import arch_of
    from pbs_tune.runtime import cross_build
    path = os.path.join(ROOT, "configs", f"{gpu}.yaml")
    prof = profiles.load(path)
    manifest = library_bind.read(prof.library)
    assert manifest["arch"] == arch_of(gpu) and prof.library.endswith(f"sm_{arch_of(gpu)}")
    assert manifest["kernel_sources"] == library_bind.kernel_sources_hash(), "stale library: rebuild it"
    held = {library_check.record_key(r) for r in manifest["kernels"]}
    calls = cross_build.calls_of(path, gpu)
    missing = sorted({str(key)[:200] for key, _ in calls if key not in held})
    assert not missing, missing
    assert {key[0] for key, _ in calls} >= {"_attend_fwd" if arch_of(gpu) != 90 else "_attend_fwd_tma",
                                             "_select_rows", "_segment_permute"}
    assert library_check.check(manifest, prof.library, calls) == []


FOLDED = """
import json, os, sys
import torch
from pbs_tune.kernels import launch
from pbs_tune.kernels.aot import compile_call
from pbs_tune.kernels.attend import attend_launch
from pbs_tune.runtime import library_check, library_write


def positional(kernel, named):
    # The launcher before the check existed: the call's arguments paired with the cubin's by position.
    return [(name, a.data_ptr() if kind[0] == "*" else a, launch._ctype(kind))
            for (name, kind, _), a in zip(kernel.signature, named.values())]


n, d = 128, 64
# One query head viewed with head stride 1 (a size-1 dimension may have any stride): Triton folds
# stride_qh into the constants, so the cubin has no such parameter.
q = torch.empty(1, 1, n, d, dtype=torch.bfloat16).as_strided((1, 1, n, d), (n * d, 1, d, 1))
k = torch.empty(1, 1, n, d, dtype=torch.bfloat16)
pos = torch.arange(n, dtype=torch.int32).view(1, 1, n)
count, index = torch.zeros(1, 1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 2, dtype=torch.int32)
result = {}
for arch, tma in ((80, False), (90, True)):
    with launch.recording() as calls:
        attend_launch(q, k, k, pos, count, count, index, block_size=64, scale=d ** -0.5, block_m=64, block_n=64,
                      num_warps=4, num_stages=2, tma=tma, out=torch.empty(1, 1, n, d, dtype=torch.bfloat16))
    call = calls[0]
    folder = os.path.join(sys.argv[1], f"sm_{arch}")
    (rec,) = library_write.write(folder, [compile_call(call, arch=arch)], dict(triton="test"))["kernels"]
    with open(os.path.join(folder, rec["file"]), "rb") as f:
        image = f.read()
    bad = dict(rec, signature=[s for s in rec["signature"] if s[0] != "N"])
    try:
        library_check.unloaded_kernel(dict(rec, signature=rec["signature"] + [["stride_vx", "i32", False]])) \\
            .packed(call.named_args())
        mismatch = None
    except launch.LaunchMismatch as exc:
        mismatch = str(exc)
    result[arch] = dict(kernel=rec["kernel"], same_key=library_check.record_key(rec) == call.key,
                        folded=dict(rec["constexprs"]).get("stride_qh"),
                        kernel_problems=library_check.kernel_problems(rec, image),
                        call_problems=library_check.call_problems(rec, image, call),
                        drifted=library_check.call_problems(rec, image, call, positional),
                        bad=library_check.kernel_problems(bad, image), mismatch=mismatch)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", FOLDED, str(tmp_path_factory.mktemp("folded"))], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch,kernel", [("80", "_attend_fwd"), ("90", "_attend_fwd_tma")])
def test_the_check_fails_on_a_launcher_that_pairs_a_folded_argument_by_position(folded, arch, kernel):
    """A stride equal to 1 is folded into the constants and the cubin has no such parameter (here a
    single query head's stride): pairing by position hands every later parameter its neighbour's
    value, which the check names."""
    got = folded[arch]
    assert got["kernel"] == kernel and got["same_key"] and got["folded"] == 1
    assert got["kernel_problems"] == [] and got["call_problems"] == []
    assert got["drifted"] and "(stride_qn) gets 1, the call's stride_qn is" in got["drifted"][0]
    # A record that dropped an argument the kernel does not fold, or a cubin of other sizes, is named too.
    assert any("not the kernel's runtime parameters" in p for p in got["bad"])
    assert any("the cubin takes" in p for p in got["bad"])
    assert "'stride_vx'" in got["mismatch"]  # an argument the call does not have


def test_compile_for_a_named_arch_needs_no_gpu_and_leaves_the_profile_alone(tmp_path):
    """sm_100 built on this CPU: what the interpreter finds a small profile runs, compiled for Blackwell."""
    from click.testing import CliRunner

    from pbs_tune.cli import main
    from pbs_tune.runtime import cross_build
    from helpers import TINY_SHAPE, profile_entry, write_profile
    path = write_profile(tmp_path, [profile_entry(64, 0.9, **TINY_SHAPE)])
    before = open(path).read()
    res = CliRunner().invoke(main, ["compile", "--profile", path, "--arch", "100", "--kernels", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "for sm_100" in res.output and "built without that GPU; never run here" in res.output
    manifest = library_bind.read(str(tmp_path / "b"))
    assert manifest["arch"] == 100 and manifest["kernel_sources"] == library_bind.kernel_sources_hash()
    held = {library_check.record_key(r) for r in manifest["kernels"]}
    assert held == set(cross_build.kernel_keys(path, "cpu"))
    assert "_attend_fwd" in {key[0] for key in held}
    assert open(path).read() == before  # a cpu profile names no sm_100 library
    res = CliRunner().invoke(main, ["compile", "--profile", path, "--arch", "80,89", "--kernels", str(tmp_path)])
    assert res.exit_code == 1 and "a library holds one arch: give one --arch" in res.output
    failed = write_profile(tmp_path, [profile_entry(64, 0.9, **TINY_SHAPE, failed_check="held out (x): over")],
                           name="failed.yaml")
    res = CliRunner().invoke(main, ["compile", "--profile", failed, "--arch", "100", "--kernels", str(tmp_path / "f")])
    assert res.exit_code == 0 and "nothing to compile" in res.output and not (tmp_path / "f").exists()


def test_every_kernel_a_plan_runs_is_among_those_its_library_is_built_from(tmp_path):
    """The calls a per-layer plan makes when served (the loader's warm-up, prompts of lengths that
    are and are not multiples of the block count's powers, a padded batch, chunked prefill), keyed
    as Triton's JIT keys them, are all among the calls `pbs-tune compile` builds the library from
    (exercise.exercise, run here in the interpreter): no call at run time compiles."""
    import torch
    import transformers

    import pbs_tune
    from pbs_tune.kernels import launch
    from helpers import TINY_SHAPE, profile_entry, tiny_llama, write_profile
    lse = dict(params=dict(block_size=16, segment_size=32, threshold=[0.8, 0.9], estimator="lse"),
               launch=dict(block_m=16, block_n=16, num_warps=4, num_stages=1))
    unpermuted = dict(params=dict(block_size=16, segment_size=64, threshold=0.9, permute=False),
                      launch=dict(block_m=16, block_n=16, num_warps=4, num_stages=1))
    plan = dict(profile_entry(64, 0.9, **TINY_SHAPE), layers={0: lse, 1: unpermuted})
    path = write_profile(tmp_path, [plan, profile_entry(96, 0.85, **TINY_SHAPE)])
    prof = pbs_tune.load_profile(path)
    model = tiny_llama()
    with launch.keys_seen() as served, torch.no_grad():
        for e in prof.for_gpu("cpu"):  # what the loader's warm-up runs on a GPU, at load time
            for params, lc in e.configs():
                exercise.run_config_once(e, params, lc, exercise.prewarm_length(params), "cpu")
        pbs_tune.apply(model, prof, min_chunk=16)
        for n in (64, 100):
            model(torch.randint(0, 97, (1, n)))
        mask = torch.ones(2, 90, dtype=torch.long)
        mask[0, :21] = 0
        model(torch.randint(0, 97, (2, 90)), attention_mask=mask)
        cache = transformers.DynamicCache()
        for a, b in ((0, 64), (64, 112)):
            model(torch.randint(0, 97, (1, b - a)), past_key_values=cache, use_cache=True)
    assert pbs_tune.stats()["pbs"] >= 10 and any(k[0] == "_block_lse" for k in served)
    with launch.keys_seen() as built, torch.no_grad():
        exercise.exercise(prof, "cpu")
    missing = sorted(map(str, served - built))
    assert not missing, missing
    from pbs_tune.runtime import cross_build  # what a build for another arch finds: the same kernels
    assert served <= set(cross_build.kernel_keys(path, "cpu"))


def test_benchmarks_switch_the_bound_kernels_for_a_block_and_get_them_back():
    from types import SimpleNamespace
    before = launch.library_size()
    with launch.using([SimpleNamespace(key=("fake",))]):
        assert launch.library_size() == 1
        with launch.using():
            assert launch.library_size() == 0  # every call goes to the JIT
        assert launch.library_size() == 1
    assert launch.library_size() == before
