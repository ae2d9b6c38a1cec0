"""Where profiles and their kernel libraries live, independent of the working directory.

A *store* is a folder with `configs/<gpu>.yaml` (profiles) and `cache/sm_<arch>/` (their
compiled kernels, one library per GPU arch). Profiles are looked up in this order: an explicit
path, the store named by the environment variable PBS_TUNE_HOME, the user's store
($XDG_DATA_HOME/pbs-tune, by default ~/.local/share/pbs-tune), and last the profiles shipped
inside the installed package. In each, the GPU's own variant ('h100-sxm') wins; another variant of
the same family is used only when no store has the exact one, and the loader says so once.
"""
import glob
import importlib.util
import os
from dataclasses import dataclass

from .target import CPU, family_of, present_gpu, resolve_gpu

ENV_HOME = "PBS_TUNE_HOME"


def user_home() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "pbs-tune")


def shipped_home() -> str:
    """The package's own store. Installed, it is pbs_tune/configs and pbs_tune/cache (package data);
    from a checkout on PYTHONPATH (not installed) it is the checkout's configs/ and cache/."""
    spec = importlib.util.find_spec("pbs_tune.configs")
    if spec is not None and spec.submodule_search_locations:
        return os.path.dirname(list(spec.submodule_search_locations)[0])
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shipped_configs() -> str:
    return os.path.join(shipped_home(), "configs")


def stores() -> list:
    """(label, configs folder) in lookup order."""
    out = []
    if os.environ.get(ENV_HOME):
        out.append((f"${ENV_HOME}", os.path.join(os.environ[ENV_HOME], "configs")))
    out.append(("user store", os.path.join(user_home(), "configs")))
    out.append(("shipped with pbs-tune", shipped_configs()))
    return out


def default_profile_path(gpu: str) -> str:
    """Where a sweep writes by default: the user's store (never the installed package)."""
    home = os.environ.get(ENV_HOME) or user_home()
    return os.path.join(home, "configs", f"{gpu}.yaml")


def sweep_hint(gpu: str, profile: str | None = None) -> str:
    """The sweep command that makes a profile for `gpu`; for the CPU interpreter, at sizes it can run."""
    sizes = ("--seqlen 384 --heads 1 --kv-heads 1 --head-dim 64 --dtype float32" if gpu == CPU
             else "--seqlen 32k --seqlen 128k")
    prefix = "TRITON_INTERPRET=1 " if gpu == CPU and os.environ.get("TRITON_INTERPRET") != "1" else ""
    return f"{prefix}pbs-tune sweep --gpu {gpu} {sizes}" + (f" --profile {profile}" if profile else "")


def default_storage_url() -> str:
    home = os.environ.get(ENV_HOME) or user_home()
    return "sqlite:///" + os.path.join(home, "studies.db")


def default_library_dir(profile_path: str, arch: int) -> str:
    """A profile in `<store>/configs/x.yaml` has its kernels in `<store>/cache/sm_<arch>/`, a loose
    `dir/x.yaml` in `dir/cache/sm_<arch>/`: one library per arch, shared by the profiles of
    every GPU of that arch (H100 and H200 profiles run the same sm_90 cubins)."""
    folder = os.path.dirname(os.path.abspath(profile_path))
    root = os.path.dirname(folder) if os.path.basename(folder) == "configs" else folder
    return os.path.join(root, "cache", f"sm_{arch}")


@dataclass
class Found:
    path: str
    where: str            # which store it came from
    other_variant: bool   # a profile of another variant of the GPU's family


def find_profile(gpu: str) -> Found | None:
    """The profile for `gpu` by the lookup order above, or None."""
    searched = stores()
    for where, folder in searched:
        path = os.path.join(folder, f"{gpu}.yaml")
        if os.path.isfile(path):
            return Found(path, where, False)
    family = family_of(gpu)
    for where, folder in searched:
        for path in sorted(glob.glob(os.path.join(folder, f"{family}.yaml")) +
                           glob.glob(os.path.join(folder, f"{family}-*.yaml"))):
            return Found(path, where, True)
    return None


def searched_folders() -> str:
    return ", ".join(folder for _, folder in stores())


def profiles_held() -> list:
    """The GPUs with a profile file in any store (the file names without .yaml), sorted."""
    return sorted({name[:-5] for _, folder in stores() if os.path.isdir(folder)
                   for name in os.listdir(folder) if name.endswith(".yaml")})


def gpu_to_tune(requested: str) -> str:
    """The GPU a tuning command (sweep, plan) runs on. Without one, a single line with a command that
    runs on this CPU (the interpreter at the try-out's sizes), not one flag at a time."""
    present = present_gpu()
    if present is None or (present == CPU and requested.lower() not in ("auto", CPU)):
        what = "no CUDA GPU here" if present is None else "this machine has no GPU, only Triton's interpreter"
        raise ValueError(f"--gpu {requested}: {what}; try pbs-tune on this CPU with: " + sweep_hint(CPU))
    return resolve_gpu(requested)
