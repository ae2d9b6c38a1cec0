"""Verification stamps: only kernels that launched from the library and matched the JIT are bound.

A GPU is stood in for by the interpreter: a library kernel's launch runs the same Triton function
through the interpreter with the arguments the launcher packed by name (so the launcher's own
pairing is exercised); a kernel that writes a wrong result is not stamped, and the loader binds
nothing that is not stamped with this launcher.
"""
import json
import os

import pytest
from click.testing import CliRunner

from pbs_tune.cli import main
from pbs_tune.kernels import launch
from pbs_tune.profile.target import Target
from pbs_tune.runtime import library_bind, library_check, library_verify

from helpers import TINY_SHAPE, profile_entry, write_profile


class InterpretedKernel(launch.BoundKernel):
    """A library kernel whose launch runs its Triton function in the interpreter."""
    wrong = ()  # kernel names whose output is spoiled after the run

    def launch(self, grid, named):
        names = [name for name, _, _ in self.packed(named)]  # what the cubin would get, paired by name
        consts = dict(self.key[2])  # the constexprs and the arguments folded into them
        fn = {f.__name__: f for f in library_check.launched_kernels()}[self.key[0]]
        fn[grid](**{n: named[n] for n in names}, **consts, num_warps=self.key[3], num_stages=self.key[4])
        if self.key[0] in self.wrong:
            named["O"].add_(1.0)
        self.launches += 1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    path = write_profile(folder, [profile_entry(64, 0.9, gpu="h100-sxm", **TINY_SHAPE)], name="h100-sxm.yaml")
    res = CliRunner().invoke(main, ["compile", "--profile", path, "--arch", "90", "--kernels", str(folder / "lib")])
    assert res.exit_code == 0, res.output
    return path, str(folder / "lib")


def _verify(monkeypatch, tmp_path, built, wrong=()):
    import shutil
    path, lib = built
    copy = str(tmp_path / "lib")
    shutil.copytree(lib, copy)
    monkeypatch.setattr(library_verify.Target, "present", staticmethod(lambda: Target("h100-sxm", 90)))
    monkeypatch.setattr(library_verify, "problem_with", lambda manifest: None)
    monkeypatch.setattr(InterpretedKernel, "wrong", wrong)
    monkeypatch.setattr(library_verify, "bound_kernel",
                        lambda image, rec: InterpretedKernel(*_fields(library_check.unloaded_kernel(rec))))
    said = []
    res = library_verify.verify([path], copy, say=said.append, device="cpu")
    return copy, res, said


def _fields(kernel):
    return (kernel.key, None, kernel.threads, kernel.shared, kernel.signature, kernel.scratch)


def test_kernels_that_launched_and_matched_are_stamped_and_bound_only_with_this_launcher(monkeypatch, tmp_path,
                                                                                       built):
    lib, res, said = _verify(monkeypatch, tmp_path, built)
    manifest = library_bind.read(lib)  # the cubins and their hashes are untouched
    assert res["failed"] == {} and res["verified"] == res["kernels"] == len(manifest["kernels"]), said
    assert all(library_bind.verified(r) for r in manifest["kernels"])
    stamp = manifest["kernels"][0]["verified"]
    assert "bit-identical" in stamp["how"] and stamp["launcher"] == library_bind.launcher_hash()
    # A stamp made with another launcher vouches for nothing: the library is not bound.
    with open(os.path.join(lib, "manifest.json")) as f:
        data = json.load(f)
    for rec in data["kernels"]:
        rec["verified"] = dict(rec["verified"], launcher="0" * 64)
    with open(os.path.join(lib, "manifest.json"), "w") as f:
        json.dump(data, f)
    monkeypatch.setattr(library_bind, "problem_with", lambda manifest: None)
    with pytest.raises(library_bind.LibraryError, match="none of its kernels was run on a GPU since it was built"):
        library_bind.bind(lib, "my.yaml")


def test_a_kernel_whose_output_differs_from_the_jit_is_not_stamped(monkeypatch, tmp_path, built):
    lib, res, said = _verify(monkeypatch, tmp_path, built, wrong=("_attend_fwd",))
    manifest = library_bind.read(lib)
    attend = [r for r in manifest["kernels"] if r["kernel"] == "_attend_fwd"]
    assert attend and not any(library_bind.verified(r) for r in attend)
    assert res["failed"] and res["verified"] < res["kernels"]
    assert any(line.startswith("mismatch:") and "op" in line for line in said)


def test_an_unverified_library_is_not_bound_and_says_how_to_verify_it(monkeypatch, built):
    _, lib = built
    monkeypatch.setattr(library_bind, "problem_with", lambda manifest: None)
    with pytest.raises(library_bind.LibraryError, match="pbs-tune verify --profile my.yaml"):
        library_bind.bind(lib, "my.yaml")
