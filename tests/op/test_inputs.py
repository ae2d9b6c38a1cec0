"""Bad input gets one clear error, never a silent wrong answer."""
import pytest
import torch

from pbs_tune import LaunchConfig, pbs_attention

OK = dict(block_size=16, segment_size=32, threshold=0.9)


def qkv(hq=4, hkv=2, n=40, d=64, dtype=torch.float32):
    return torch.randn(1, hq, n, d, dtype=dtype), torch.randn(1, hkv, n, d, dtype=dtype), \
        torch.randn(1, hkv, n, d, dtype=dtype)


@pytest.mark.parametrize("make,kwargs,err,match", [
    (lambda: (torch.randn(4, 40, 64),) + qkv()[1:], {}, ValueError, "4-D"),
    (lambda: (qkv()[0], qkv()[1].half(), qkv()[2]), {}, TypeError, "share a dtype"),
    (lambda: (qkv()[0], qkv()[1], torch.randn(1, 2, 41, 64)), {}, ValueError, "shapes differ"),
    (lambda: (qkv()[0], torch.randn(2, 2, 41, 64), torch.randn(2, 2, 41, 64)), {}, ValueError, "agree"),
    (lambda: (qkv()[0], torch.randn(1, 2, 39, 64), torch.randn(1, 2, 39, 64)), {}, ValueError, "q is longer than k"),
    (lambda: qkv(hq=6, hkv=4), {}, ValueError, "multiple of key/value heads"),
    (lambda: qkv(d=96), {}, ValueError, "head_dim 96"),
    (lambda: qkv(dtype=torch.bfloat16), {}, TypeError, "float32 or float16"),
    (lambda: ("q",) + qkv()[1:], {}, TypeError, "torch.Tensor"),
    (lambda: (qkv()[0].transpose(-1, -2).contiguous().transpose(-1, -2),) + qkv()[1:], {}, ValueError,
     "contiguous last dimension"),
    (qkv, dict(segment_size=40), ValueError, "multiple of block_size"),
    (qkv, dict(block_size=24, segment_size=48), ValueError, "power of two"),
    (qkv, dict(block_size=8, segment_size=16), ValueError, "power of two"),
    (qkv, dict(threshold=0.0), ValueError, r"\(0, 1\]"),
    (qkv, dict(threshold=1.5), ValueError, r"\(0, 1\]"),
    (qkv, dict(threshold=True), ValueError, r"\(0, 1\]"),
    (qkv, dict(threshold=[0.5, 0.9, 0.9]), ValueError, r"one per query head \(4\)"),
    (qkv, dict(threshold=[0.5, 0.9, 1.2, 0.9]), ValueError, r"\(0, 1\]"),
    (qkv, dict(launch=LaunchConfig(32, 16, 4, 1)), ValueError, "must divide block_size"),
    (qkv, dict(launch=LaunchConfig(16, 16, 3, 1)), ValueError, "num_warps"),
    (qkv, dict(launch=(16, 16, 4, 1)), TypeError, "LaunchConfig"),
])
def test_bad_input_raises_clear_error(make, kwargs, err, match):
    q, k, v = make()
    with pytest.raises(err, match=match):
        pbs_attention(q, k, v, **{**OK, **kwargs})


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        pbs_attention(*qkv(), **OK)


def test_non_contiguous_but_unit_stride_inputs_are_accepted():
    q, k, v = qkv()
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, H, D) memory, as HF produces
    a = pbs_attention(q_t, k, v, **OK, launch=LaunchConfig(16, 16, 4, 1))
    b = pbs_attention(q, k, v, **OK, launch=LaunchConfig(16, 16, 4, 1))
    assert torch.allclose(a, b, atol=1e-6)


def test_the_parameters_as_one_object_or_as_keywords_run_the_same_op():
    from pbs_tune import PbsParams, permute_and_select
    q, k, v = qkv()
    params = PbsParams(16, 32, 0.7, estimator="lse")
    assert torch.equal(pbs_attention(q, k, v, params), pbs_attention(q, k, v, block_size=16, segment_size=32,
                                                                     threshold=0.7, estimator="lse"))
    assert torch.equal(permute_and_select(q, k, v, params)[1].to_dense(),
                       permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=0.7,
                                          estimator="lse")[1].to_dense())
    with pytest.raises(TypeError, match="not both"):
        pbs_attention(q, k, v, params, threshold=0.9)
    with pytest.raises(TypeError, match="give params=PbsParams"):
        pbs_attention(q, k, v, block_size=16)
    with pytest.raises(TypeError, match="params must be a PbsParams"):
        pbs_attention(q, k, v, dict(OK))


@pytest.mark.parametrize("fields,match", [
    (dict(block_size=24, segment_size=48, threshold=0.9), "power of two"),
    (dict(block_size=16, segment_size=40, threshold=0.9), "multiple of block_size"),
    (dict(block_size=16, segment_size=32, threshold=(0.5, 1.5)), r"\(0, 1\]"),
    (dict(block_size=16, segment_size=32, threshold=0.9, permute="yes"), "permute must be true or false"),
    (dict(block_size=16, segment_size=32, threshold=0.9, estimator="max"), "estimator must be one of mean, lse"),
])
def test_parameters_are_checked_where_they_are_made(fields, match):
    from pbs_tune import PbsParams
    with pytest.raises(ValueError, match=match):
        PbsParams(**fields)
