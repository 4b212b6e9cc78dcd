"""The optimizer step inside backward (``train.optimizer_in_backward``), to lower peak memory.

Each parameter is updated as soon as its gradient is complete, and that gradient is freed at once, so the
gradients of the whole model never exist together: peak memory drops by up to their size (cada_base:
361 M parameters, 1.4 GB in fp32).

The update is the optimizer's own. The hook narrows the optimizer's parameter groups to the one parameter
and calls ``step()``, so the state (``exp_avg``, ``exp_avg_sq``, ``step``), the lr schedule and
``state_dict`` are those of the ordinary optimizer, and checkpoints resume in either mode. AdamW updates
each parameter from its own gradient only, so the result equals one ``step()`` after backward
(``tests/test_step_in_backward.py``). Whatever needs all gradients at once cannot be combined with it:
clipping by the global norm, accumulation over micro-batches, fp16 loss scaling, and DDP (its all-reduce
comes after the hook).
"""
from __future__ import annotations

import torch


class StepInBackward:
    """Registers, on every parameter of ``optimizer``, a hook that steps it and frees its gradient.

    Args:
        optimizer: an optimizer whose update of a parameter depends only on that parameter's gradient
            (AdamW, SGD; not LAMB or anything with a global norm).
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._group_of = {param: index for index, group in enumerate(optimizer.param_groups)
                          for param in group["params"]}
        for param in self._group_of:
            param.register_post_accumulate_grad_hook(self._step_parameter)

    def _step_parameter(self, param: torch.Tensor) -> None:
        groups = self.optimizer.param_groups
        kept = [group["params"] for group in groups]
        for group in groups:
            group["params"] = []
        groups[self._group_of[param]]["params"] = [param]
        try:
            self.optimizer.step()
        finally:
            for group, params in zip(groups, kept):
                group["params"] = params
        param.grad = None
