"""Triton < 3.7's interpreter under numpy 2.5: loop bounds read from a one-element array."""
import numpy as np
import pytest

from pbs_tune.kernels import interpreter_compat


class _Scope:
    def __init__(self):
        self.attrs = {}

    def set_attr(self, obj, name, value):
        self.attrs[name] = value


class _Handle:
    def __init__(self, data):
        self.data = data


class _Tensor:
    def __init__(self, data):
        self.handle = _Handle(data)


def _old_patch_lang_tensor(tensor, scope):
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))


def test_an_old_interpreter_takes_the_element(monkeypatch):
    from triton.runtime import interpreter
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _old_patch_lang_tensor)
    assert interpreter_compat.patch()
    scope = _Scope()
    interpreter._patch_lang_tensor(object, scope)
    index = scope.attrs["__index__"]
    assert index(_Tensor(np.array([37], dtype=np.int32))) == 37
    assert scope.attrs["__bool__"](_Tensor(np.array([0]))) is False
    assert scope.attrs["__bool__"](_Tensor(np.array([3]))) is True
    assert not interpreter_compat.patch(), "patching twice"


def test_a_fixed_interpreter_is_left_alone(monkeypatch):
    from triton.runtime import interpreter

    def fixed(tensor, scope):
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", fixed)
    assert not interpreter_compat.patch()
    assert interpreter._patch_lang_tensor is fixed


def test_the_old_rule_is_what_numpy_refuses():
    """The failure the patch is for: numpy 2.4 and later refuse int() of a 1-d array (earlier ones warn)."""
    if np.lib.NumpyVersion(np.__version__) < "2.4.0":
        pytest.skip("numpy before 2.4 only warns")
    scope = _Scope()
    _old_patch_lang_tensor(object, scope)
    with pytest.raises(TypeError, match="0-dimensional"):
        scope.attrs["__index__"](_Tensor(np.array([37])))
