"""Optimizer groups, the lr schedule, val carving, mixed precision and gradient checkpointing."""
import math
from pathlib import Path

import pytest
import torch

from datasets.ara_masking import mask_attribute_tokens, pack_candidate_groups
from datasets.person_search import split_records
from datasets.records import PersonRecord
from engine.builders import build_model, build_optimizer
from models.cada import CADA
from models.registry import get_model_spec
from utils.config import load_config
from utils.run_log import format_duration
from utils.schedule import lr_factor


def test_per_step_warmup_then_cosine_by_hand():
    def factor(step, total, warmup=0, min_ratio=0.0):
        return lr_factor(step, total, 1, "cosine_per_step", warmup, min_ratio)
    assert [factor(s, 10, warmup=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4, 10, 4) == 1.0  # cosine starts at the top
    assert math.isclose(factor(7, 10, 4), 0.5)  # half-way through the 6 cosine steps
    assert math.isclose(factor(10, 10, 4, min_ratio=0.1), 0.1)
    assert factor(3, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))


def test_phase_durations_read_as_the_readme_reports_them():
    assert format_duration(8.14) == "8.1 s"
    assert format_duration(59.94) == "59.9 s"
    assert format_duration(59.96) == "1 min 0 s"  # not "60.0 s"
    assert format_duration(240.2) == "4 min 0 s"
    assert format_duration(561.0) == "9 min 21 s"


def test_parameter_groups_weight_decay_and_new_head_lr():
    config = load_config("configs/synthetic.yaml", ["optim.decay_norm_and_bias=false", "optim.new_head_lr_mult=10",
                                                   "model.pretrained=weights.pth", "optim.lr=0.001"])
    model = build_model(config, load_weights=False)
    optimizer = build_optimizer(config, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert group_of[id(named["text_encoder.encoder.layer.0.attention.self.query.bias"])]["weight_decay"] == 0.0
    assert group_of[id(named["visual_encoder.norm.weight"])]["weight_decay"] == 0.0
    assert group_of[id(named["text_encoder.embeddings.word_embeddings.weight"])]["weight_decay"] == 0.0
    query = group_of[id(named["text_encoder.encoder.layer.0.attention.self.query.weight"])]
    assert query["weight_decay"] == 0.05 and query["lr"] == 0.001
    assert group_of[id(named["itm_local_head.weight"])]["lr"] == pytest.approx(0.01)  # absent from BLIP
    assert group_of[id(named["itm_head.weight"])]["lr"] == 0.001
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_fused_cpu_adamw_equals_adamw_written_out():
    """The optimizer is torch's fused AdamW on CPU too; three steps equal the update written out by hand:
    m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, p = p (1 - lr wd) - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)."""
    config = load_config("configs/synthetic.yaml", ["optim.lr=0.01", "optim.weight_decay=0.1"])
    torch.manual_seed(0)
    model = build_model(config, load_weights=False)
    optimizer = build_optimizer(config, model)
    assert all(group["fused"] for group in optimizer.param_groups)
    params = [p for p in model.parameters()][:12] + [model.text_encoder.embeddings.word_embeddings.weight]
    expected = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    (b1, b2), eps, lr, wd = config.optim.betas, config.optim.eps, 0.01, 0.1
    generator = torch.Generator().manual_seed(1)
    for t in range(1, 4):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=generator)
            p.grad = g.clone()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            step_size = lr * (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
            expected[i] = expected[i] * (1 - lr * wd) - step_size
        optimizer.step()
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.detach(), want, atol=1e-6, rtol=1e-5)


def test_val_carved_from_training_identities_with_a_fixed_seed():
    records = [PersonRecord(Path(f"/x/{i}.jpg"), i // 2, ("a",), "train") for i in range(40)]
    records += [PersonRecord(Path("/x/t.jpg"), 99, ("a",), "test")]
    first, second = split_records(records, 0.25, seed=3), split_records(records, 0.25, seed=3)
    val_people = {r.person_id for r in first["val"]}
    assert len(val_people) == 5 and val_people == {r.person_id for r in second["val"]}
    assert val_people.isdisjoint(r.person_id for r in first["train"])
    assert len(first["train"]) + len(first["val"]) == 40 and len(first["test"]) == 1
    assert {r.person_id for r in split_records(records, 0.25, seed=4)["val"]} != val_people
    with pytest.raises(ValueError, match="already has a val split"):
        split_records(records + [PersonRecord(Path("/x/v.jpg"), 50, ("a",), "val")], 0.1)


def tiny_batch(b=6, length=12, size=(64, 32)):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 3000, (b, length), generator=generator)
    ids[:, 0] = 101
    groups = pack_candidate_groups([[[2], [4, 5]]] * b, length)
    ara_ids, ara_labels = mask_attribute_tokens(ids, groups, prob=1.0)
    return {"image": torch.randn(b, 3, *size, generator=generator), "input_ids": ids,
            "attention_mask": torch.ones(b, length, dtype=torch.long), "label": torch.arange(b) // 2,
            "ara_input_ids": ara_ids, "ara_labels": ara_labels}


def make_model(grad_checkpointing=False):
    torch.manual_seed(0)
    return CADA(get_model_spec("cada_tiny"), (64, 32), None, grad_checkpointing=grad_checkpointing)


@pytest.mark.slow
def test_gradient_checkpointing_same_losses_and_gradients():
    batch = tiny_batch()
    plain, checkpointed = make_model(), make_model(grad_checkpointing=True)
    results = []
    for model in (plain, checkpointed):
        losses = model(batch)
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    for name in results[0][0]:
        torch.testing.assert_close(results[0][0][name], results[1][0][name], rtol=1e-6, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_losses_close_to_fp32():
    """Tolerance: 2% relative per loss (bf16 keeps 8 mantissa bits; losses are computed in fp32)."""
    batch, model = tiny_batch(), make_model()
    fp32 = model(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(batch)
    for name, value in fp32.items():
        assert bf16[name].dtype == torch.float32, name
        torch.testing.assert_close(bf16[name], value, rtol=2e-2, atol=2e-2, msg=name)


def test_patch_projection_keeps_weight_decay():
    config = load_config("configs/synthetic.yaml", ["optim.decay_norm_and_bias=false"])
    model = build_model(config, load_weights=False)
    optimizer = build_optimizer(config, model)
    named = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert group_of[id(named["visual_encoder.patch_embed.proj.weight"])]["weight_decay"] == 0.05
    assert group_of[id(named["visual_encoder.pos_embed"])]["weight_decay"] == 0.0
