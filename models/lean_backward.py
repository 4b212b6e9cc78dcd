"""Layers that keep less for backward than PyTorch's defaults, with the same results.

Three places where autograd keeps more than backward needs, at sizes that set a training step's peak:

- **Dropout** (:class:`LeanDropout`). On CPU, ``F.dropout`` keeps its float noise tensor (4 bytes per
  entry); ``torch.native_dropout``, which CUDA already uses, draws the same mask from the same RNG state and
  keeps it as bool (1 byte).
- **Attention with dropout** (:func:`dropout_attention`). PyTorch's CPU ``scaled_dot_product_attention`` has
  no fused kernel with dropout, so in training its math path keeps three (B, heads, L, S) float tensors per
  call: the probabilities, the dropout noise and the dropped probabilities (plus scaled copies of q and k).
  This function keeps only q, k, v, one log-sum-exp per row and the dropout mask as bool, and recomputes the
  probabilities in backward, as fused kernels do. With scale s = 1/√d, keep mask K, dropout mask M and keep
  probability r = 1 − p:

      P = softmax(s q kᵀ, masked by K),     O = (P ∘ M / r) v
      dv = (P ∘ M / r)ᵀ dO,   dP = (dO vᵀ) ∘ M / r,   dS = P ∘ (dP − rowsum(dP ∘ P)),
      dq = s dS k,            dk = s dSᵀ q

  The mask is drawn as the math path draws it (Bernoulli(r) on a float tensor of P's shape), so for the
  same RNG state the result equals ``F.scaled_dot_product_attention(..., dropout_p=p)``. Keys and values
  may be given once per distinct context with ``context_index`` choosing one per row; they are gathered
  inside, and only the ungathered ones are kept.
- **The feed-forward GELU** (:func:`gelu_linear`). In ``W₂ GELU(h) + b₂`` autograd keeps both h (for
  GELU's backward) and GELU(h) (for the linear's), two tensors four times the model width. This function
  keeps h only and recomputes GELU(h), an elementwise op, in backward:
  dW₂ = dYᵀ GELU(h),  db₂ = Σ dY,  dh = GELU'(h) ∘ (dY W₂).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _gather(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return x if index is None else x[index]


def _scale(query: torch.Tensor) -> float:
    return 1.0 / math.sqrt(query.shape[-1])


def _masked_scores(query: torch.Tensor, key: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """s q kᵀ, with -inf where ``keep`` is False (the softmax's input)."""
    scores = (query @ key.transpose(-2, -1)) * _scale(query)
    return scores if keep is None else scores.masked_fill(~keep, float("-inf"))


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, query, key, value, keep, dropout, context_index):
        scores = _masked_scores(query, _gather(key, context_index), keep)
        log_sum_exp = scores.logsumexp(dim=-1, keepdim=True)
        probabilities = (scores - log_sum_exp).exp_()
        del scores
        noise = torch.empty_like(probabilities).bernoulli_(1.0 - dropout)
        out = (probabilities.mul_(noise).div_(1.0 - dropout)) @ _gather(value, context_index)
        ctx.save_for_backward(query, key, value, keep, noise.bool(), log_sum_exp, context_index)
        ctx.dropout = dropout
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        query, key, value, keep, kept, log_sum_exp, context_index = ctx.saved_tensors
        keep_rate = 1.0 - ctx.dropout
        key_rows, value_rows = _gather(key, context_index), _gather(value, context_index)
        probabilities = (_masked_scores(query, key_rows, keep) - log_sum_exp).exp_()
        dropped = probabilities * kept / keep_rate
        grad_value_rows = dropped.transpose(-2, -1) @ grad_out
        del dropped
        grad_probabilities = (grad_out @ value_rows.transpose(-2, -1)).mul_(kept).div_(keep_rate)
        row_dot = (grad_probabilities * probabilities).sum(dim=-1, keepdim=True)
        grad_scores = probabilities.mul_(grad_probabilities.sub_(row_dot)).mul_(_scale(query))
        grad_query = grad_scores @ key_rows
        grad_key_rows = grad_scores.transpose(-2, -1) @ query
        if context_index is None:
            return grad_query, grad_key_rows, grad_value_rows, None, None, None
        grad_key = torch.zeros_like(key).index_add_(0, context_index, grad_key_rows)
        grad_value = torch.zeros_like(value).index_add_(0, context_index, grad_value_rows)
        return grad_query, grad_key, grad_value, None, None, None


def dropout_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None,
                      dropout: float, context_index: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with dropout on the probabilities, kept lean for backward.

    Args:
        query: (B, heads, L, d).
        key, value: (B, heads, S, d), or (U, heads, S, d) with ``context_index``.
        keep: bool mask broadcastable to (B, heads, L, S), True where attention is allowed (every row must
            allow at least one key), or None.
        dropout: probability p of dropping an attention probability, 0 < p < 1.
        context_index: (B,) long, the row of ``key``/``value`` each query row attends over, or None.

    Returns:
        (B, heads, L, d), equal to ``F.scaled_dot_product_attention`` on the gathered keys and values
        for the same RNG state.
    """
    return _DropoutAttention.apply(query, key, value, keep, dropout, context_index)


class LeanDropout(nn.Module):
    """``nn.Dropout`` with the same output for the same RNG state, keeping a bool mask for backward."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return torch.native_dropout(x, self.p, True)[0]

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias):
        out = F.linear(F.gelu(hidden), weight, bias)  # under autocast, in autocast's dtype
        ctx.save_for_backward(hidden, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        hidden, weight = ctx.saved_tensors
        dtype = grad_out.dtype  # the forward's compute dtype (autocast is off in backward)
        activated = F.gelu(hidden).to(dtype)
        grad_activated = grad_out @ weight.to(dtype)
        grad_hidden = torch.ops.aten.gelu_backward(grad_activated.to(hidden.dtype), hidden)
        grad_weight = (grad_out.flatten(0, -2).T @ activated.flatten(0, -2)).to(weight.dtype)
        grad_bias = grad_out.flatten(0, -2).sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_hidden, grad_weight, grad_bias


def gelu_linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(F.gelu(hidden), weight, bias)`` (exact GELU) keeping ``hidden`` but not its GELU for backward.

    Args:
        hidden: (..., F) pre-activations of the feed-forward's first projection.
        weight, bias: the second projection's (D, F) weight and (D,) bias (or None).

    Returns:
        (..., D).
    """
    return _GeluLinear.apply(hidden, weight, bias)
