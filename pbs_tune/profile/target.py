"""The GPU a profile, a sweep or a kernel library is for: its name, arch and shared memory.

`Target` is that GPU resolved once (the present one's arch and shared memory read from the
device, another's from `TARGETS`); the tuner and the runtime pass it on instead of re-deriving
the compute capability or an on-GPU flag.

Variants of one family differ in clocks, power and memory bandwidth (H100 SXM vs PCIe vs
NVL), so timings tuned on one must not silently stand for another: profiles are named by
variant ('h100-sxm'), and a family name ('h100') selects whichever variant is present.
"""
import os
import re
from dataclasses import dataclass

CPU = "cpu"  # Triton's interpreter on the CPU: used by tests and CI
# What an interpreter run (a sweep, plan or relaunch on the CPU) may take on. The interpreter runs
# a 2-head 2k-token op in about 9 s on a 2-core machine, so a trial at 4k is minutes; the dense
# reference holds heads x N x N scores (128k tokens: 64 GB a head), which the OOM killer ends.
INTERPRETER_MAX_SEQLEN = 4096
INTERPRETER_MAX_HEAD_TOKENS = 16384  # query heads x tokens


def detect_gpu() -> str:
    """Variant name of GPU 0 ('h100-sxm'), or 'cpu' when only the Triton interpreter is available."""
    import torch  # here, not at import: naming a GPU or reading a profile needs no torch
    if torch.cuda.is_available():
        return variant_name(torch.cuda.get_device_name(0))
    if os.environ.get("TRITON_INTERPRET") == "1":
        return CPU
    raise RuntimeError("no CUDA GPU found; to run on the CPU (Triton's interpreter), start Python with "
                       "TRITON_INTERPRET=1 set in the environment")


def present_gpu() -> str | None:
    """Like detect_gpu, but None where there is neither a GPU nor the interpreter."""
    try:
        return detect_gpu()
    except RuntimeError:
        return None


# Compute capability and opt-in shared memory per block (bytes) of the GPU families profiles are
# made for (NVIDIA's CUDA programming guide): what a kernel library and its launches are built for.
TARGETS = {"a100": (80, 166912), "l40s": (89, 101376), "h100": (90, 232448), "h200": (90, 232448),
           "b200": (100, 232448)}


def arch_of(gpu: str) -> int | None:
    """'a100-sxm' -> 80; None for a family this table does not know."""
    return TARGETS.get(family_of(gpu), (None, None))[0]


def shared_memory_of(gpu: str) -> int | None:
    return TARGETS.get(family_of(gpu), (None, None))[1]


def family_name(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'NVIDIA A100-SXM4-80GB' -> 'a100'; 'NVIDIA GH200 480GB' -> 'gh200'."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device_name.upper().replace("-", " "))
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


def variant_name(device_name: str) -> str:
    """Family plus form factor where the name tells it: 'h100-sxm', 'h100-pcie', 'h100-nvl', 'h200-sxm'.

    An H100 SXM5 reports 'NVIDIA H100 80GB HBM3' and an H200 SXM plain 'NVIDIA H200'; both are SXM.
    """
    family = family_name(device_name)
    upper = device_name.upper()
    if "PCIE" in upper:
        return f"{family}-pcie"
    if "NVL" in upper:
        return f"{family}-nvl"
    if "SXM" in upper or (family == "h100" and "HBM3" in upper) or family == "h200":
        return f"{family}-sxm"
    return family


def family_of(name: str) -> str:
    """'h100-sxm' -> 'h100'; 'h100' -> 'h100'."""
    return name.split("-", 1)[0]


def resolve_gpu(requested="auto", *, must_be_present: bool = True) -> str:
    """The GPU a command or call means; every caller decides it here.

    'auto' is the present GPU; a family ('h100') is the present variant of it ('h100-sxm').
    With `must_be_present` (tuning, compiling, planning) any other name is an error; without it
    (reading a profile as data) it names another GPU."""
    if requested in (None, "", "auto"):
        return detect_gpu()
    present = detect_gpu() if must_be_present else present_gpu()
    wanted = requested.lower()
    if present is not None and wanted in (present, family_of(present)):
        return present
    if must_be_present:
        raise ValueError(f"--gpu {requested} does not match the GPU present ({present}): timings are only "
                         f"tuned on the GPU they are for; run this on a {requested}, or pass --gpu auto to tune "
                         f"this {present}")
    return wanted


def interpreter_size_error(seqlen: int, heads: int) -> str | None:
    """Why the CPU interpreter cannot run `heads` query heads over `seqlen` tokens in reasonable time
    and memory, or None when it can."""
    if seqlen > INTERPRETER_MAX_SEQLEN or seqlen * heads > INTERPRETER_MAX_HEAD_TOKENS:
        return (f"{seqlen} tokens x {heads} query heads is beyond what the CPU interpreter runs in reasonable "
                f"time and memory (at most {INTERPRETER_MAX_SEQLEN} tokens and {INTERPRETER_MAX_HEAD_TOKENS} "
                f"query heads x tokens)")
    return None


def variant_in(names, gpu: str) -> str | None:
    """Of the GPU names a profile holds, the one whose entries serve `gpu`: its own, else
    another variant of its family (the first by name), else None."""
    names = sorted(set(names))
    if gpu in names:
        return gpu
    family = [n for n in names if family_of(n) == family_of(gpu)]
    return family[0] if family else None


def runs_here(gpu: str) -> bool:
    """Whether entries tuned on `gpu` can run in this process (the same family is present)."""
    present = present_gpu()
    return present is not None and family_of(present) == family_of(gpu)


def device_for(gpu: str) -> str:
    return "cpu" if gpu == CPU else "cuda"


@dataclass(frozen=True)
class Target:
    """name: the variant ('h100-sxm') or 'cpu' (Triton's interpreter); arch: compute capability as
    a number (90), None on the CPU or for a family `TARGETS` does not know; shared_memory: opt-in
    shared memory per block in bytes."""

    name: str
    arch: int | None = None
    shared_memory: int | None = None

    @property
    def on_gpu(self) -> bool:
        return self.name != CPU

    @property
    def device(self) -> str:
        return device_for(self.name)

    @property
    def family(self) -> str:
        return family_of(self.name)

    @property
    def capability(self) -> tuple | None:
        """(major, minor), as torch reports it; None on the CPU."""
        return None if self.arch is None else divmod(self.arch, 10)

    @classmethod
    def named(cls, name: str) -> "Target":
        """The target `name` means: the present GPU's own figures when it is that GPU (or its
        family), else the table's (a GPU that is not here: compiling for it, reading its profile)."""
        if name == CPU:
            return cls(CPU)
        present = present_gpu()
        if present not in (None, CPU) and family_of(name) == family_of(present):
            import torch
            props = torch.cuda.get_device_properties(0)
            return cls(name, props.major * 10 + props.minor, props.shared_memory_per_block_optin)
        return cls(name, arch_of(name), shared_memory_of(name))

    @classmethod
    def present(cls) -> "Target | None":
        """This machine's GPU (or the interpreter), None where there is neither."""
        gpu = present_gpu()
        return None if gpu is None else cls.named(gpu)
