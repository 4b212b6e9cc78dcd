"""loss.local_pairs_fraction: ITM/ATP on the first m anchors are the full batch's terms for those anchors."""
import pytest
import torch

import models.cada as cada_module
from models.losses.itm import anchor_count
from models.registry import get_model_spec
from tests.test_trimming import SIZE, assert_same, losses_and_grads, training_batch
from utils.config_schema import LossConfig

REAL_ITM_LOSS, REAL_ATP_LOSS = cada_module.itm_loss, cada_module.atp_loss_reference


def test_anchor_count_rounds_up_and_keeps_one():
    assert [anchor_count(32, f) for f in (1.0, 0.25, 0.2, 0.01)] == [32, 8, 7, 1]


def captured_local_inputs(fraction, monkeypatch):
    """Runs a training forward; returns what reached the ITM loss and the reference ATP loss."""
    captured = {}

    def itm(positive, negative, valid=None):
        captured["itm"] = torch.cat([positive, negative]).detach()
        return REAL_ITM_LOSS(positive, negative, valid)

    def atp(logits, is_match, valid=None):
        captured["atp"], captured["is_match"] = logits.detach(), is_match
        return REAL_ATP_LOSS(logits, is_match, valid)

    monkeypatch.setattr(cada_module, "itm_loss", itm)
    monkeypatch.setattr(cada_module, "atp_loss_reference", atp)
    objective = LossConfig(local_pairs_fraction=fraction)
    torch.manual_seed(0)
    model = cada_module.CADA(get_model_spec("cada_tiny"), SIZE, objective=objective).eval()
    losses = model(training_batch())
    return captured, losses


@pytest.mark.slow
def test_subset_scores_are_the_full_batch_scores_of_its_anchors(monkeypatch):
    full, _ = captured_local_inputs(1.0, monkeypatch)
    subset, losses = captured_local_inputs(0.5, monkeypatch)
    b, m = 4, 2
    # pairs are ordered [positives, text + hardest image, hardest text + image]: keep each block's first m
    rows = [block * b + row for block in range(3) for row in range(m)]
    assert subset["itm"].shape[0] == subset["atp"].shape[0] == 3 * m
    torch.testing.assert_close(subset["itm"], full["itm"][rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(subset["atp"], full["atp"][rows], atol=1e-5, rtol=1e-5)
    assert subset["is_match"].tolist() == [1] * m + [0] * (2 * m)
    # the loss is the mean over the 3m pairs: cross-entropy written out by hand
    labels = torch.tensor([1] * m + [0] * (2 * m))
    expected = -torch.log_softmax(subset["itm"].float(), dim=1)[torch.arange(3 * m), labels].mean()
    torch.testing.assert_close(losses["itm"].detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_subset_multi_process_layout_equals_single_process(monkeypatch):
    """The world > 1 branch (distinct images gathered per anchor) gives the single-process losses and gradients."""
    objective = LossConfig(local_pairs_fraction=0.5)
    torch.manual_seed(0)
    model = cada_module.CADA(get_model_spec("cada_tiny"), SIZE, objective=objective).eval()
    batch = training_batch()
    single = losses_and_grads(model, batch)
    monkeypatch.setattr(cada_module, "get_world_size", lambda: 2)  # gathers stay identities without a group
    assert_same(losses_and_grads(model, batch), single)
