"""Gradient regression against the authors' code: ``fixtures/cada_release_grads.pt`` holds one training step of
the CADA release (LinDixuan/CADA at 1087f33, CPU, fp32, train mode with every dropout at p = 0) on the weights
and inputs of ``cada_release_outputs.pt`` (see ``fixtures/README.md``): the losses, the hard negatives, every
parameter's gradient norm, the gradients and updated values of 27 parameters at stored rows, and the AdamW
settings. We take the same step with this project's model, loss weights (``configs/cuhk_pedes.yaml``) and
optimizer builder, and compare. It guards the plain layers (``nn.Dropout``, timm's ``Mlp``, SDPA), the
trimmed and shared-key/value training passes, and the [PAD] row that the authors' word tables never train.
"""
import gc

import pytest
import torch

import models.cada as cada_module
from engine.builders import build_optimizer
from models.med_bert import MultiHeadAttention
from tests.helpers import FIXTURES, build_release_model, release_config
from utils.vocab import PAD_ID

GRAD_NORM_RTOL = 1e-4
# attention key biases have a zero gradient in exact arithmetic (softmax ignores a per-row shift): what both
# implementations store is float noise (<= ~1e-8), compared against this floor instead
KEY_BIAS_NORM_FLOOR = 1e-7
# at AdamW's first step the update is lr * g / (|g| + eps): where |g| is far above eps (1e-8) it is fixed by
# the gradient's sign to within float rounding; where |g| is near eps it can move by up to lr
DETERMINED_UPDATE_GRAD = 1e-5
UPDATED_ATOL = 5e-8  # 0.5 % of the lr 1e-5; a missing weight decay moves a norm weight (~1) by 5e-7
OPTIMIZER_SETTINGS = ("lr", "weight_decay", "betas", "eps", "amsgrad", "maximize")


def _rows(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return (tensor if rows is None else tensor[rows]).detach().clone()


def _without_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, MultiHeadAttention):
            module.dropout = 0.0


@pytest.fixture(scope="module")
def release():
    return torch.load(FIXTURES / "cada_release_grads.pt", weights_only=True)


@pytest.fixture(scope="module")
def ours(release, tmp_path_factory):
    """One training step of this project's full-size model; only the compared numbers are kept (the model,
    its gradients and the optimizer state, ~7 GB, are freed before the tests read them)."""
    config = release_config()
    model = build_release_model(tmp_path_factory.mktemp("release")).train()
    _without_dropout(model)
    batch = {"image": release["images"], "input_ids": release["input_ids"],
             "attention_mask": release["attention_mask"], "label": release["pids"],
             "ara_input_ids": release["ara_mask_ids"], "ara_labels": release["ara_labels"]}
    chosen, select = {}, cada_module.select_hard_negatives

    def recording_negatives(*args, **kwargs):
        chosen["image"], chosen["text"] = select(*args, **kwargs)
        return chosen["image"], chosen["text"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cada_module, "select_hard_negatives", recording_negatives)
        losses = model(batch)
    weights = config.loss.weights()
    total = sum(weights[name] * value for name, value in losses.items())
    total.backward()
    params = dict(model.named_parameters())
    result = {
        "losses": {name: value.item() for name, value in losses.items()}, "total": total.item(),
        "weights": weights, "negatives": chosen,
        "grad_norm": {name: p.grad.double().norm().item() for name, p in params.items()},
        "pad_row": model.text_encoder.embeddings.word_embeddings.weight.grad[PAD_ID].clone(),
        "grads": {name: _rows(params[name].grad, part["rows"]) for name, part in release["subset"].items()},
    }
    optimizer = build_optimizer(config, model)
    result["settings"] = {name: {key: group[key] for key in OPTIMIZER_SETTINGS}
                          for group in optimizer.param_groups for name, p in params.items()
                          if any(p is q for q in group["params"])}
    optimizer.step()
    result["after"] = {name: _rows(params[name], part["rows"]) for name, part in release["subset"].items()}
    del model, optimizer, params, losses, total
    gc.collect()
    return result


def _canonical_names(release) -> dict[str, str]:
    """Every state-dict name of a parameter → the name the fixture stores it under (tied ones once)."""
    return {alias: name for name, aliases in release["aliases"].items() for alias in aliases}


@pytest.mark.slow  # builds cada_base (224M parameters) and takes one step on the CPU: minutes, ~7 GB
def test_losses_weights_and_hard_negatives_equal_release(ours, release):
    expected = release["losses"]
    for name, key in (("global", "glb"), ("itm", "itm"), ("atp", "atp"), ("ara", "ara")):
        assert ours["losses"][name] == pytest.approx(expected[key], rel=1e-5), name
    assert ours["total"] == pytest.approx(expected["total"], rel=1e-5)
    weights = release["loss_weights"]
    assert ours["weights"] == {"global": weights["glb"], "itm": weights["loc"], "atp": weights["loc"],
                               "ara": weights["ara"]}
    assert ours["negatives"]["image"].tolist() == release["neg_image_for_text"].tolist()
    assert ours["negatives"]["text"].tolist() == release["neg_text_for_image"].tolist()


@pytest.mark.slow
def test_every_parameter_gradient_norm_equals_release(ours, release):
    canonical = _canonical_names(release)
    norms = {canonical[name]: norm for name, norm in ours["grad_norm"].items()}
    assert norms.keys() == release["grad_norm"].keys()
    wrong = []
    for name, expected in release["grad_norm"].items():
        if name.endswith("self.key.bias"):
            ok = norms[name] <= KEY_BIAS_NORM_FLOOR and expected <= KEY_BIAS_NORM_FLOOR
        else:
            ok = abs(norms[name] - expected) <= GRAD_NORM_RTOL * expected
        if not ok:
            wrong.append(f"{name}: ours {norms[name]:.6g}, release {expected:.6g}")
    assert not wrong, "\n".join(wrong)
    total = sum(norm**2 for norm in norms.values()) ** 0.5
    assert total == pytest.approx(release["grad_norm_total"], rel=GRAD_NORM_RTOL)


@pytest.mark.slow
def test_pad_row_of_the_text_encoder_word_table_gets_no_gradient(ours, release):
    stored = release["subset"]["text_encoder.embeddings.word_embeddings.weight"]
    assert stored["rows"][0] == PAD_ID and torch.count_nonzero(stored["grad"][0]) == 0
    assert torch.count_nonzero(ours["pad_row"]) == 0


@pytest.mark.slow
def test_stored_gradients_equal_release(ours, release):
    for name, part in release["subset"].items():
        expected = part["grad"]
        torch.testing.assert_close(ours["grads"][name], expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item(), msg=name)


@pytest.mark.slow
def test_optimizer_builder_gives_every_parameter_the_release_settings(ours, release):
    canonical = _canonical_names(release)
    settings = {canonical[name]: setting for name, setting in ours["settings"].items()}
    assert settings.keys() == release["optimizer"]["per_param"].keys()
    for name, expected in release["optimizer"]["per_param"].items():
        ours_setting = {**settings[name], "betas": list(settings[name]["betas"])}
        assert ours_setting == {key: expected[key] for key in OPTIMIZER_SETTINGS}, name


@pytest.mark.slow
def test_parameters_after_one_adamw_step_equal_release(ours, release):
    lr = release["optimizer"]["per_param"]["itm_head.weight"]["lr"]
    for name, part in release["subset"].items():
        determined = part["grad"].abs() > DETERMINED_UPDATE_GRAD
        difference = (ours["after"][name] - part["after"]).abs()
        assert difference[determined].max() <= UPDATED_ATOL, name
        if not determined.all():
            assert difference[~determined].max() <= 2 * lr, name
