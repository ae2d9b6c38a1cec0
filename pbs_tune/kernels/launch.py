"""Run a Triton kernel: from the ahead-of-time kernel library when one matches, else the JIT.

Every kernel call of pbs-tune goes through `run`. A call matches a library kernel when it
would make Triton's JIT build that very kernel: same function, constexpr values, launch
options and argument specialisation (types, 16-byte alignment of pointers and divisibility
by 16 of specialised integers, integers equal to 1 folded into constants), computed here
by the JIT's own rules. A match launches the library's cubin through NVIDIA's CUDA Python
driver bindings on the current torch stream, without compiling and without Triton's cache.
Anything else goes to the JIT, and the first such call of each kernel is logged with why.

The cubin takes only the arguments the key kept: an argument folded into the constants (a
stride equal to 1) is not a parameter of the compiled kernel. So a call's arguments are named
by the kernel's parameter list and packed by the names the library recorded, never by position.
"""
import contextlib
import ctypes
import functools
import inspect
import logging
import os
from dataclasses import dataclass

import torch

logger = logging.getLogger("pbs_tune")

if os.environ.get("TRITON_INTERPRET") == "1":
    from .interpreter_compat import patch as _patch_interpreter
    _patch_interpreter()

POINTER_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
                 torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}
_CTYPES = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "u64": ctypes.c_uint64, "fp32": ctypes.c_float,
           "u1": ctypes.c_bool}

_library = {}      # call key -> BoundKernel
_jit_noted = set()
_recorded = None   # a list while `recording()` is active
_seen = None       # a list of Calls while `calls_seen()` is active
jit_calls = 0      # calls that went to the JIT while a library was bound (benchmarks read it)


@dataclass
class Call:
    fn: object
    grid: tuple
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int

    @property
    def key(self):
        return call_key(self.fn, self.args, self.constexprs, self.num_warps, self.num_stages)

    def named_args(self) -> dict:
        return named_arguments(self.fn, self.args)


@contextlib.contextmanager
def recording():
    """Record kernel calls instead of launching them (for ahead-of-time compilation)."""
    global _recorded
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


@contextlib.contextmanager
def calls_seen():
    """Collect every kernel call while running them as usual: which kernels a piece of work needs
    and with which arguments (on the CPU too), to compare with what a library holds."""
    global _seen
    _seen = []
    try:
        yield _seen
    finally:
        _seen = None


@contextlib.contextmanager
def keys_seen():
    """The keys of the calls made in the block (filled when the block ends)."""
    keys = set()
    with calls_seen() as calls:
        yield keys
    keys.update(c.key for c in calls)


@contextlib.contextmanager
def using(bound_kernels=()):
    """Within the block, exactly `bound_kernels` are bound (none: every call goes to the JIT); the
    kernels bound before come back afterwards. For benchmarks that compare library and JIT."""
    saved = dict(_library)
    _library.clear()
    register(bound_kernels)
    try:
        yield
    finally:
        _library.clear()
        _library.update(saved)


def register(bound_kernels) -> None:
    """Make library kernels available to `run` (process-wide, in pbs-tune's own state only)."""
    for bk in bound_kernels:
        _library[bk.key] = bk


def clear() -> None:
    _library.clear()
    _jit_noted.clear()


def library_size() -> int:
    return len(_library)


def run(fn, grid, args, constexprs, *, num_warps, num_stages):
    """Launch `fn` (a @triton.jit function) over `grid` with positional runtime `args`."""
    global jit_calls
    if _seen is not None:
        _seen.append(Call(fn, tuple(grid), tuple(args), dict(constexprs), num_warps, num_stages))
    if _recorded is not None:
        _recorded.append(Call(fn, tuple(grid), tuple(args), dict(constexprs), num_warps, num_stages))
        return
    if _library:
        key = call_key(fn, args, constexprs, num_warps, num_stages)
        bound = _library.get(key) if key is not None else None
        if bound is not None:
            bound.launch(grid, named_arguments(fn, args))
            return
        jit_calls += 1
        _note_jit(fn, "no library kernel matches this call (shape, alignment or config)")
    fn[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)


def _note_jit(fn, why):
    name = getattr(fn, "__name__", str(fn))
    if name not in _jit_noted:
        _jit_noted.add(name)
        logger.warning("pbs_tune: %s runs through Triton's JIT: %s", name, why)


@functools.lru_cache(maxsize=None)
def runtime_params(fn):
    """(name, specialised) of the non-constexpr parameters, in call order. Under the interpreter
    (TRITON_INTERPRET=1) the same is read from the function and its decorator's arguments, so
    that the CPU tests can compute the keys a GPU run would have."""
    if hasattr(fn, "params"):  # Triton's JIT
        return tuple((p.name, not p.do_not_specialize) for p in fn.params if not p.is_constexpr)
    from triton.language import constexpr
    names = [p.name for p in inspect.signature(fn.fn).parameters.values() if p.annotation is not constexpr]
    every = list(inspect.signature(fn.fn).parameters)
    fixed = {every[x] if isinstance(x, int) else x for x in fn.kwargs.get("do_not_specialize") or ()}
    return tuple((name, name not in fixed) for name in names)


def named_arguments(fn, args) -> dict:
    """{parameter name: value} of a call's positional runtime arguments."""
    names = [name for name, _ in runtime_params(fn)]
    if len(names) != len(args):
        raise TypeError(f"{fn.__name__} takes {len(names)} runtime arguments, the call gave {len(args)}")
    return dict(zip(names, args))


def call_key(fn, args, constexprs, num_warps, num_stages):
    """The identity of the kernel the JIT would build for this call, or None if unsupported."""
    sig, consts = [], dict(constexprs)
    for (name, specialised), a in zip(runtime_params(fn), args):
        if isinstance(a, torch.Tensor):
            sig.append((name, "*" + POINTER_TYPES[a.dtype], a.data_ptr() % 16 == 0))
        elif isinstance(a, bool):
            sig.append((name, "u1", False))
        elif isinstance(a, int):
            if specialised and a == 1:
                consts[name] = 1
                continue
            kind = "i32" if -2 ** 31 <= a < 2 ** 31 else ("u64" if a >= 2 ** 63 else "i64")
            sig.append((name, kind, specialised and a % 16 == 0))
        elif isinstance(a, float):
            sig.append((name, "fp32", False))
        else:
            return None
    return make_key(fn.__name__, sig, consts, num_warps, num_stages)


def make_key(kernel, signature, constexprs, num_warps, num_stages):
    return (kernel, tuple(tuple(s) for s in signature), tuple(sorted(constexprs.items())), num_warps, num_stages)


class LaunchMismatch(RuntimeError):
    """A call whose arguments do not fit the compiled kernel: found before launching it."""


def _ctype(kind):
    return ctypes.c_void_p if kind[0] == "*" else _CTYPES[kind]


class BoundKernel:
    """A library cubin loaded into the current CUDA context, ready to launch."""

    def __init__(self, key, function, threads, shared, signature, scratch):
        self.key = key
        self.function = function
        self.threads = threads
        self.shared = shared
        self.signature = signature   # ((name, type, div16), ...): the compiled kernel's runtime parameters
        self.scratch = scratch       # ((size, align), ...) pointers Triton appends after them
        self.launches = 0

    def packed(self, named: dict) -> list:
        """(name, value, ctype) per runtime parameter of the cubin, in its order, taken from the
        call's arguments by name (`named_arguments`); scratch pointers are appended at launch."""
        out = []
        for name, kind, _ in self.signature:
            if name not in named:
                raise LaunchMismatch(f"{self.key[0]}: the library kernel takes {name!r}, the call has no such "
                                     "argument: rebuild the kernel library (pbs-tune compile)")
            a = named[name]
            out.append((name, a.data_ptr() if kind[0] == "*" else a, _ctype(kind)))
        return out

    def launch(self, grid, named: dict):
        from cuda.bindings import driver
        gx, gy, gz = (tuple(grid) + (1, 1))[:3]
        packed = self.packed(named)
        for name, kind, _ in self.signature:  # a host pointer would fault the kernel and end the CUDA context
            if kind[0] == "*" and not named[name].is_cuda:
                raise LaunchMismatch(f"{self.key[0]}: argument {name} is on {named[name].device}, not the GPU")
        values, types = [v for _, v, _ in packed], [t for _, _, t in packed]
        keep = []
        for size, align in self.scratch:
            ptr = 0
            if size:
                buf = torch.empty(gx * gy * gz * size + align, dtype=torch.uint8, device="cuda")
                keep.append(buf)
                ptr = -(-buf.data_ptr() // align) * align
            values.append(ptr)
            types.append(ctypes.c_void_p)
        stream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
        err, = driver.cuLaunchKernel(self.function, gx, gy, gz, self.threads, 1, 1, self.shared, stream,
                                     (tuple(values), tuple(types)), 0)
        if err != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"launching {self.key[0]} from the kernel library failed: {err.name}")
        self.launches += 1
