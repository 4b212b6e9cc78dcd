"""train.optimizer_in_backward: stepping each parameter inside backward gives the ordinary AdamW run."""
import copy

import pytest
import torch

from engine.builders import build_optimizer
from engine.step_in_backward import StepInBackward
from models.cada import CADA
from models.registry import get_model_spec
from tests.test_trimming import SIZE, training_batch
from utils.config import load_config
from utils.config_schema import ARALossConfig, LossConfig
from utils.errors import ConfigError


OPTIM = load_config("configs/synthetic.yaml", ["optim.weight_decay=0.05"])  # AdamW with decay, as in the recipe


def tiny_model_and_optimizer():
    torch.manual_seed(0)
    model = CADA(get_model_spec("cada_tiny"), SIZE, objective=LossConfig(ara=ARALossConfig(weight=1.0)))
    return model, build_optimizer(OPTIM, model)


def train_three_steps(in_backward: bool, model, optimizer):
    hooks = StepInBackward(optimizer) if in_backward else None
    batch = training_batch()
    for step in range(3):
        local = step > 0  # step 0 leaves the ITM/ATP heads without gradient: AdamW must skip them in both modes
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (step + 1)  # a schedule changes lr between steps
        losses = model(batch, local=local)
        sum(losses.values()).backward()
        if hooks is None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            assert all(p.grad is None for p in model.parameters())  # every gradient was freed inside backward
    return model, optimizer


@pytest.mark.slow
def test_steps_inside_backward_equal_one_step_after_backward():
    model, optimizer = tiny_model_and_optimizer()
    twin = copy.deepcopy(model)
    twin_optimizer = build_optimizer(OPTIM, twin)
    model, optimizer = train_three_steps(False, model, optimizer)
    twin, twin_optimizer = train_three_steps(True, twin, twin_optimizer)

    for (name, expected), actual in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(actual, expected, atol=1e-7, rtol=1e-6, msg=name)
    head = dict(twin.named_parameters())["itm_head.weight"]
    assert int(twin_optimizer.state[head]["step"]) == 2  # no gradient in step 0: not stepped, as in the loop
    expected_state, actual_state = optimizer.state_dict(), twin_optimizer.state_dict()
    assert expected_state["param_groups"] == actual_state["param_groups"]  # so checkpoints resume in either mode
    for index, state in expected_state["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(actual_state["state"][index][key], value, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("override, key", [("train.accumulate_steps=2", "train.accumulate_steps"),
                                           ("train.clip_grad_norm=1.0", "train.clip_grad_norm"),
                                           ("train.amp=fp16", "train.amp")])
def test_what_needs_all_gradients_at_once_is_refused(override, key):
    with pytest.raises(ConfigError, match=rf"^{key} .*optimizer_in_backward"):
        load_config("configs/synthetic.yaml", ["train.optimizer_in_backward=true", override])


@pytest.fixture
def one_thread():
    """Multi-threaded CPU kernels differ in the last bits from one run to the next; AdamW magnifies that."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_training_run_with_the_step_inside_backward_ends_with_the_same_weights(tmp_path, one_thread):
    from engine.trainer import train
    from tests.conftest import tiny_overrides
    from utils.checkpoint import load_checkpoint

    weights = {}
    for mode in ("false", "true"):
        overrides = [*tiny_overrides(tmp_path / "data", tmp_path / mode), "train.epochs=1",
                     f"train.optimizer_in_backward={mode}"]
        train(load_config("configs/synthetic.yaml", overrides))
        last = load_checkpoint(tmp_path / mode / "last.pth")
        weights[mode], state = last["model"], last["optimizer"]["state"]
        assert last["train_state"]["step"] > 5 and state  # past loss.local_start_step, AdamW state saved
    for name, expected in weights["false"].items():
        torch.testing.assert_close(weights["true"][name], expected, atol=1e-5, rtol=1e-4, msg=name)


def test_more_than_one_process_is_refused_before_training(tmp_path, monkeypatch):
    import engine.trainer as trainer
    from tests.conftest import tiny_overrides

    monkeypatch.setattr(trainer, "get_world_size", lambda: 2)  # as under torchrun with two processes
    config = load_config("configs/synthetic.yaml",
                         [*tiny_overrides(tmp_path / "data", tmp_path / "run"), "train.optimizer_in_backward=true"])
    with pytest.raises(ConfigError, match="needs one process, got 2"):
        trainer.train(config)
    assert not (tmp_path / "run" / "last.pth").exists()
