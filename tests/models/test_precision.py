import pytest
import torch

from mammolens.models.precision import autocast, autocast_dtype, cuda_math


def test_autocast_dtype_names():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("auto", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp16", cpu) is torch.float16
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def _flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


def test_cuda_math_is_a_no_op_off_cuda():
    before = _flags()
    with cuda_math(torch.device("cpu"), tf32=not before[0]):
        assert _flags() == before


@pytest.mark.parametrize("tf32", [True, False])
def test_cuda_math_sets_and_restores(tf32):
    before = _flags()
    with cuda_math(torch.device("cuda"), tf32=tf32):  # only flags: no GPU needed
        assert _flags() == (tf32, tf32, True)
    assert _flags() == before
