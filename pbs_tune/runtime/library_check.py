"""Does the library's launcher hand each compiled kernel exactly what it takes? Checked on the CPU.

A cubin lists its kernel's parameters (ordinal, offset, size in bytes) in the ELF section
`.nv.info.<kernel>`; the manifest names them (Triton's metadata at build time: the runtime
arguments it kept, in order, then the scratch pointers it appends). Three things must agree:
- the kernel's source: the record keeps its runtime parameters in order, and every one it
  dropped was folded into the constants (an integer equal to 1);
- the cubin: one parameter per recorded argument and scratch pointer, each of the size the
  launcher gives that type;
- a real call: what `BoundKernel.packed` hands the cubin, slot by slot, is the call's argument
  of that slot's name (its data pointer for a tensor), of that size, in that order.
`kernel_problems` is the first two (the loader runs it on every kernel before binding it);
`call_problems` the third; `check` all of them for every kernel of a library and every call
its profiles' exercise makes (run in Triton's interpreter: `cross_build.calls_of`). It imports
nothing of the library's own modules: the loader runs it before binding.
"""
import ctypes
import struct

from ..kernels import launch

_KPARAM_INFO = 0x17   # EIATTR_KPARAM_INFO: index (4 bytes), ordinal (2), offset (2), flags with the size (4)
_SVAL = 4             # an attribute with a 2-byte length and a payload; the others take 4 bytes


class CubinError(ValueError):
    """A file that is not a cubin holding the named kernel."""


def type_size(kind: str) -> int:
    """Bytes the launcher passes for an argument of this type."""
    return ctypes.sizeof(launch._ctype(kind))


def _sections(image: bytes) -> dict:
    if image[:5] != b"\x7fELF\x02":
        raise CubinError("not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", image, 0x28)
    entsize, count, names_at = struct.unpack_from("<HHH", image, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * entsize) for i in range(count)]
    names_off = headers[names_at][4]
    out = {}
    for h in headers:
        start = names_off + h[0]
        out[image[start:image.index(b"\0", start)].decode()] = image[h[4]:h[4] + h[5]]
    return out


def cubin_params(image: bytes, symbol: str) -> list:
    """Sizes in bytes of `symbol`'s parameters, by ordinal, as the cubin declares them."""
    info = _sections(image).get(".nv.info." + symbol)
    if info is None:
        raise CubinError(f"no .nv.info section for {symbol}")
    params, at = {}, 0
    while at < len(info):
        fmt, attr = info[at], info[at + 1]
        size = 4 + (struct.unpack_from("<H", info, at + 2)[0] if fmt == _SVAL else 0)
        if attr == _KPARAM_INFO:
            _, ordinal, _, flags = struct.unpack_from("<IHHI", info, at + 4)
            params[ordinal] = (flags >> 18) & 0x3FFF
        at += size
    if at != len(info) or sorted(params) != list(range(len(params))):
        raise CubinError(f"the parameter table of {symbol} does not parse")
    return [params[i] for i in range(len(params))]


def launched_kernels():
    """The @triton.jit functions that pbs-tune launches (through `launch.run`)."""
    from ..kernels.attend import _attend_fwd
    from ..kernels.attend_hopper import _attend_fwd_tma
    from ..kernels.block_scores import _block_lse
    from ..kernels.block_select import _select_rows
    from ..kernels.key_scores import _key_scores_mean, _key_scores_stats
    from ..kernels.segment_sort import _segment_permute
    return (_attend_fwd, _attend_fwd_tma, _key_scores_stats, _key_scores_mean, _select_rows, _segment_permute,
            _block_lse)


def kernel_problems(rec: dict, image: bytes) -> list:
    """What does not fit between a manifest record, its kernel's source and its cubin."""
    name = rec["kernel"]
    fn = {f.__name__: f for f in launched_kernels()}.get(name)
    if fn is None:
        return [f"{name}: no such kernel in pbs_tune.kernels"]
    problems = []
    kept = [s[0] for s in rec["signature"]]
    source = [n for n, _ in launch.runtime_params(fn)]
    folded = dict(rec["constexprs"])
    if [n for n in source if n in kept] != kept or any(n not in kept and n not in folded for n in source):
        problems.append(f"{name}: the record's arguments {kept} are not the kernel's runtime parameters {source} "
                        "less those folded into constants")
    try:
        sizes = cubin_params(image, rec["symbol"])
    except CubinError as exc:
        return problems + [f"{name}: {exc}"]
    wanted = [type_size(s[1]) for s in rec["signature"]] + [8] * len(rec["scratch"])
    if sizes != wanted:
        problems.append(f"{name}: the cubin takes {len(sizes)} parameters of {sizes} bytes, the record "
                        f"{len(wanted)} of {wanted}")
    return problems


def _value_of(arg):
    return arg.data_ptr() if hasattr(arg, "data_ptr") else arg


def default_packer(kernel, named):
    return kernel.packed(named)


def call_problems(rec: dict, image: bytes, call, packer=default_packer) -> list:
    """What the launcher (`packer`) would hand the cubin for `call` (a launch.Call) against what the
    cubin takes: count, order and size of every slot, and the value by the name the record gives it."""
    name = rec["kernel"]
    sizes = cubin_params(image, rec["symbol"])
    named = call.named_args()
    try:
        packed = packer(unloaded_kernel(rec), named)
    except launch.LaunchMismatch as exc:
        return [str(exc)]
    problems = []
    if len(packed) + len(rec["scratch"]) != len(sizes):
        problems.append(f"{name}: the launcher packs {len(packed)} arguments and {len(rec['scratch'])} scratch "
                        f"pointers, the cubin takes {len(sizes)} parameters")
    for slot, ((_, value, ctype), (want, kind, _), size) in enumerate(zip(packed, rec["signature"], sizes)):
        if ctypes.sizeof(ctype) != size or type_size(kind) != size:
            problems.append(f"{name}: parameter {slot} ({want}) is {size} bytes, the launcher passes "
                            f"{ctypes.sizeof(ctype)}")
        if value != _value_of(named[want]):
            problems.append(f"{name}: parameter {slot} ({want}) gets {value}, the call's {want} is "
                            f"{_value_of(named[want])}")
    return problems


def record_key(rec) -> tuple:
    """The call key (launch.call_key) of a manifest record."""
    return launch.make_key(rec["kernel"], rec["signature"], dict(rec["constexprs"]), rec["num_warps"],
                           rec["num_stages"])


def unloaded_kernel(rec: dict, function=None) -> launch.BoundKernel:
    """A manifest record as the launcher sees it (`function`: the loaded CUDA function, if any)."""
    return launch.BoundKernel(record_key(rec), function, rec["threads"], rec["shared"],
                              tuple(tuple(s) for s in rec["signature"]), tuple(tuple(s) for s in rec["scratch"]))


def check(manifest: dict, folder: str, calls, packer=default_packer) -> list:
    """Every problem between the launcher and a library (`manifest` as library_bind.read gives it, its
    cubins in `folder`): each kernel against its source and cubin, and each call ((key, launch.Call),
    as `cross_build.calls_of` gives them) that the library holds a kernel for against that kernel.
    Empty: the launcher fits."""
    import os
    images, records = {}, {}
    problems = []
    for rec in manifest["kernels"]:
        with open(os.path.join(folder, rec["file"]), "rb") as f:
            images[rec["file"]] = f.read()
        records[record_key(rec)] = rec
        problems += kernel_problems(rec, images[rec["file"]])
    for key, call in calls:
        rec = records.get(key)
        if rec is not None:
            problems += call_problems(rec, images[rec["file"]], call, packer)
    return sorted(set(problems))
