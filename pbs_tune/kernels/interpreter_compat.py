"""Triton 3.6's interpreter under numpy 2.4 and later, so a GPU machine's torch 2.11 stack can cross-build.

Triton before 3.7 turns a scalar of a kernel (a one-element array in its interpreter) into a loop
bound with `int(array)`, which numpy 2.4 and later refuse: every `range(runtime value)`
of our kernels stops with "only 0-dimensional arrays can be converted to Python scalars". Later
Triton takes the element first; `patch()` gives an older interpreter the same rule. Nothing runs
unless TRITON_INTERPRET=1, and a Triton that already takes the element is left alone.
"""
import inspect


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
