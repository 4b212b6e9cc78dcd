"""Lean backward: dropout, attention and the feed-forward GELU equal PyTorch's in output and gradients, keep less."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.train_step import use_authors_layers
from models.lean_backward import LeanDropout, dropout_attention, gelu_linear
from models.med_bert import MedBert

BATCH, HEADS, QUERIES, KEYS, HEAD_DIM, DROPOUT = 3, 2, 5, 7, 4, 0.3


def _masks():
    generator = torch.Generator().manual_seed(3)
    key_mask = torch.rand(BATCH, 1, 1, KEYS, generator=generator) > 0.4
    key_mask[..., 0] = True
    causal = torch.ones(QUERIES, KEYS, dtype=torch.bool).tril()[None, None].expand(BATCH, 1, -1, -1)
    return {"none": None, "key padding": key_mask, "causal": causal}


def _inputs(distinct_contexts: int):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(BATCH, HEADS, QUERIES, HEAD_DIM, generator=generator, dtype=torch.float64)
    key, value = (torch.randn(distinct_contexts, HEADS, KEYS, HEAD_DIM, generator=generator, dtype=torch.float64)
                  for _ in range(2))
    return [t.requires_grad_() for t in (query, key, value)]


def _run(attention, inputs, grad_out):
    for t in inputs:
        t.grad = None
    torch.manual_seed(7)
    out = attention(*inputs)
    out.backward(grad_out)
    return out.detach(), [t.grad.clone() for t in inputs]


@pytest.mark.parametrize("mask_name", ["none", "key padding", "causal"])
@pytest.mark.parametrize("gathered", [False, True])
def test_equals_sdpa_with_dropout_in_output_and_gradients(mask_name, gathered):
    keep = _masks()[mask_name]
    index = torch.tensor([1, 0, 1]) if gathered else None
    inputs = _inputs(2 if gathered else BATCH)
    grad_out = torch.randn(BATCH, HEADS, QUERIES, HEAD_DIM, generator=torch.Generator().manual_seed(9),
                           dtype=torch.float64)

    def sdpa(query, key, value):
        if index is not None:
            key, value = key[index], value[index]
        return F.scaled_dot_product_attention(query, key, value, attn_mask=keep, dropout_p=DROPOUT)

    expected, expected_grads = _run(sdpa, inputs, grad_out)
    out, grads = _run(lambda q, k, v: dropout_attention(q, k, v, keep, DROPOUT, index), inputs, grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    key, value = (t if index is None else t[index] for t in inputs[1:])
    assert not torch.allclose(out, F.scaled_dot_product_attention(inputs[0], key, value, attn_mask=keep))  # dropped


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def _out_grads_saved(fn, leaves, grad_out):
    """``fn()``'s output, the leaves' gradients for ``grad_out`` and the bytes autograd kept for backward."""
    for t in leaves:
        t.grad = None
    outputs = []
    saved = _saved_bytes(lambda: outputs.append(fn()))
    outputs[0].backward(grad_out)
    return outputs[0], [t.grad.clone() for t in leaves], saved


def test_keeps_no_float_probability_tensor_for_backward():
    keep = _masks()["key padding"]
    query, key, value = (t.detach().float().requires_grad_() for t in _inputs(BATCH))
    probabilities_bytes = BATCH * HEADS * QUERIES * KEYS * 4
    inputs_bytes = sum(t.numel() * 4 for t in (query, key, value))
    lean = _saved_bytes(lambda: dropout_attention(query, key, value, keep, DROPOUT))
    math_path = _saved_bytes(lambda: F.scaled_dot_product_attention(query, key, value, attn_mask=keep,
                                                                      dropout_p=DROPOUT))
    # ours: q, k, v, the bool dropout mask, one float per row, the keep mask
    assert lean == inputs_bytes + probabilities_bytes // 4 + BATCH * HEADS * QUERIES * 4 + keep.numel()
    assert math_path >= 3 * probabilities_bytes + inputs_bytes  # probabilities, noise, dropped


def test_med_bert_training_on_cpu_takes_the_lean_paths_with_the_same_result():
    torch.manual_seed(0)
    bert = MedBert(50, 32, num_layers=2, heads=4, ffn=64, image_width=48, max_positions=16, dropout=0.1).train()
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    image = torch.randn(2, 5, 48)

    def loss_and_grads():
        bert.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        loss = bert(ids, mask, image).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in bert.parameters()]

    lean_loss, lean_grads = loss_and_grads()
    lean_saved = _saved_bytes(lambda: bert(ids, mask, image))
    use_authors_layers(bert)
    assert not any(isinstance(module, LeanDropout) for module in bert.modules())
    assert all(type(layer.output).__name__ == "_PlainFeedForwardOutput" for layer in bert.encoder.layer)
    sdpa_loss, sdpa_grads = loss_and_grads()
    sdpa_saved = _saved_bytes(lambda: bert(ids, mask, image))
    torch.testing.assert_close(lean_loss, sdpa_loss, rtol=1e-5, atol=1e-7)
    for lean, sdpa in zip(lean_grads, sdpa_grads):
        torch.testing.assert_close(lean, sdpa, rtol=1e-4, atol=1e-6)
    assert lean_saved < sdpa_saved


def test_lean_dropout_equals_torch_dropout_and_keeps_a_bool_mask():
    x = torch.randn(6, 50, requires_grad=True)
    grad_out = torch.randn(6, 50)

    def seeded(module):
        torch.manual_seed(4)
        return module(x)

    (lean_out, [lean_grad], lean_saved), (torch_out, [torch_grad], torch_saved) = (
        _out_grads_saved(lambda: seeded(module), [x], grad_out)
        for module in (LeanDropout(0.25), torch.nn.Dropout(0.25)))
    assert torch.equal(lean_out, torch_out) and torch.equal(lean_grad, torch_grad)
    assert (lean_out == 0).any()
    assert (lean_saved, torch_saved) == (x.numel(), 4 * x.numel())  # bool mask against float noise
    assert LeanDropout(0.25).eval()(x) is x


@pytest.mark.parametrize("with_bias", [True, False])
def test_gelu_linear_equals_gelu_then_linear_and_keeps_no_activation(with_bias):
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 5, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True) if with_bias else None
    grad_out = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    (lean_out, lean_grads, lean_saved), (plain_out, plain_grads, plain_saved) = (
        _out_grads_saved(lambda: fn(hidden, weight, bias), leaves, grad_out)
        for fn in (gelu_linear, lambda h, w, b: F.linear(F.gelu(h), w, b)))
    torch.testing.assert_close(lean_out, plain_out, rtol=1e-12, atol=1e-12)
    for lean, plain in zip(lean_grads, plain_grads):
        torch.testing.assert_close(lean, plain, rtol=1e-12, atol=1e-12)
    assert lean_saved == (hidden.numel() + weight.numel()) * 8  # h and W, not GELU(h)
    assert plain_saved == lean_saved + hidden.numel() * 8


def test_gelu_linear_under_bf16_autocast_matches_the_plain_layers():
    torch.manual_seed(0)
    hidden = torch.randn(6, 32, requires_grad=True)
    linear = torch.nn.Linear(32, 8)
    outputs, grads = [], []
    for fn in (lambda h: gelu_linear(h, linear.weight, linear.bias), lambda h: linear(F.gelu(h))):
        hidden.grad, linear.weight.grad, linear.bias.grad = None, None, None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(hidden * 1.0)
        out.float().square().sum().backward()
        outputs.append(out)
        grads.append([hidden.grad, linear.weight.grad, linear.bias.grad])
    assert outputs[0].dtype == outputs[1].dtype == torch.bfloat16
    torch.testing.assert_close(outputs[0], outputs[1])
    for lean, plain in zip(*grads):
        assert lean.dtype == plain.dtype == torch.float32
        torch.testing.assert_close(lean, plain, rtol=2e-2, atol=2e-2)


def test_lean_vit_mlp_equals_timms_and_refuses_what_it_cannot_fuse():
    from timm.layers import Mlp

    from models.vit import LeanMlp
    torch.manual_seed(0)
    lean, plain = LeanMlp(16, 64), Mlp(16, 64)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(lean(x), plain(x))
    lean(x).sum().backward()
    plain(x).sum().backward()
    torch.testing.assert_close(lean.fc1.weight.grad, plain.fc1.weight.grad)
    torch.testing.assert_close(lean.fc2.weight.grad, plain.fc2.weight.grad)
    with pytest.raises(ValueError, match="exact GELU"):
        LeanMlp(16, 64, drop=0.1)
