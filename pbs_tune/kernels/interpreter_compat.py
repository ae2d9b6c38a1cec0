"""Where Triton's interpreter differs from the GPU in what our kernels use; applied under TRITON_INTERPRET=1.

Loop bounds (`patch`), so a GPU machine's torch 2.11 stack can cross-build: Triton before 3.7 turns a scalar of a kernel (a one-element array in its interpreter) into a loop
bound with `int(array)`, which numpy 2.4 and later refuse: every `range(runtime value)`
of our kernels stops with "only 0-dimensional arrays can be converted to Python scalars". Later
Triton takes the element first; `patch()` gives an older interpreter the same rule. Nothing runs
unless TRITON_INTERPRET=1, and a Triton that already takes the element is left alone.
"""
import inspect

import numpy as np
import torch


def patch() -> bool:
    """Make the interpreter's tensors index by their one element; True if a patch was needed."""
    from triton.runtime import interpreter
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_takes_element", False):
        return False
    if "int(self.handle.data)" not in inspect.getsource(original):
        return False

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
        scope.set_attr(tensor, "__bool__", lambda self: bool(self.handle.data.reshape(-1)[0])
                       if self.handle.data.size == 1 else True)

    patch_lang_tensor._takes_element = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True


FP8_TORCH = {"fp8e4nv": (torch.float8_e4m3fn, 448.0), "fp8e5": (torch.float8_e5m2, 57344.0)}


def patch_fp8_rounding() -> bool:
    """Round float downcasts to FP8 as the GPU's `cvt.rn.satfinite` does; True if a patch was needed.

    The interpreter rounds by adding one to the truncated mantissa, and a carry out of the mantissa
    is lost (ORed into the exponent): 0.49 becomes 0.25 in e4m3 where the GPU gives 0.5, about 3% of
    values in a tile. Tests of the 8-bit attend mode would then measure the emulation. Here the
    conversion goes through torch's round-to-nearest-even, after saturating to the format's largest
    value as the GPU instruction does; other conversions stay the interpreter's."""
    from triton.runtime import interpreter
    original = getattr(interpreter, "_convert_float", None)
    if original is None or getattr(original, "_rounds_as_gpu", False):
        return False
    if "significand_output + (cut_off > 0)" not in inspect.getsource(original):
        return False

    def convert_float(input, input_dtype, output_dtype, rounding_mode):
        target = FP8_TORCH.get(getattr(output_dtype, "name", None))
        if target is None or input.dtype not in (np.float32, np.float16) or rounding_mode not in (
                None, interpreter._ir.ROUNDING_MODE.RTNE):
            return original(input, input_dtype, output_dtype, rounding_mode)
        fp8, largest = target
        x = torch.from_numpy(np.ascontiguousarray(input, dtype=np.float32)).clamp(-largest, largest)
        return x.to(fp8).view(torch.uint8).numpy().reshape(input.shape)

    convert_float._rounds_as_gpu = True
    interpreter._convert_float = convert_float
    return True
