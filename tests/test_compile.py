"""``train.compile``: a torch.compile'd tiny CADA gives the eager losses and gradients on CPU.

The graphs are captured as ``train.compile`` captures them (dynamo, then AOT autograd for the backward) and run by
the ``aot_eager`` backend: inductor's C++ code generation would take minutes on a 2-core CPU and is not the code
a GPU runs anyway; ``benchmarks/gpu_check.sh`` compiles the full model with inductor on the GPU."""
import shutil

import pytest
import torch

from models.cada import CADA
from models.registry import get_model_spec
from tests.helpers import SIZE, assert_same, losses_and_grads, training_batch

compiler_missing = not (hasattr(torch, "compile") and torch._dynamo.is_dynamo_supported()
                        and (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")))


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing, reason="torch.compile needs dynamo and a C++ compiler")
def test_compiled_step_equals_eager():
    torch.manual_seed(0)
    model = CADA(get_model_spec("cada_tiny"), SIZE).eval()  # eval: no dropout, so both runs draw nothing
    batch = training_batch()
    eager = losses_and_grads(model, batch)
    compiled = torch.compile(model, backend="aot_eager")
    assert_same(losses_and_grads(model, batch, compiled), eager)
