"""Image–text matching (ITM) with hard negatives drawn from the global batch.

For the b local pairs (T_i, I_i) and the Bg pairs of the global batch (all ranks), with
unnormalised 256-d projections t_i, v_j and temperature τ = 0.07 (computed under no_grad):

    sim_t2i[i, j] = t_i · v_j / τ      (local text i vs global image j)
    sim_i2t[i, j] = v_i · t_j / τ      (local image i vs global text j)

Entries with y_j = y_i are excluded (set to −inf *before* selection). The negative image of text
i is argmax_j sim_t2i[i, j] (reference) or a draw from softmax_j(sim_t2i[i, :]) (BLIP); the
negative text of image i likewise from sim_i2t. The fused encoder then scores b positive pairs
and 2b negative pairs (b (T_i, I⁻_i) and b (T⁻_i, I_i)), and

    L_itm = (1 / 3b) Σ_n CE(itm_head(h_n), c_n),   c = [1]*b + [0]*2b.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def itm_similarities(image_proj: torch.Tensor, text_proj: torch.Tensor, global_image_proj: torch.Tensor | None = None,
                     global_text_proj: torch.Tensor | None = None,
                     temp: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection scores ``(sim_t2i, sim_i2t)`` for hard negatives, each (b, Bg), in fp32 and without gradient.

    Args:
        image_proj: (b, D) local image projections (unnormalised in the reference).
        text_proj: (b, D) local text projections.
        global_image_proj: (Bg, D) image projections of the global batch; None means the local batch.
        global_text_proj: (Bg, D) text projections of the global batch; None means the local batch.
    """
    global_image_proj = image_proj if global_image_proj is None else global_image_proj
    global_text_proj = text_proj if global_text_proj is None else global_text_proj
    with torch.autocast(image_proj.device.type, enabled=False):  # fp32 even under autocast: ranks negatives
        sim_t2i = text_proj.float() @ global_image_proj.float().t() / temp  # (b, Bg)
        sim_i2t = image_proj.float() @ global_text_proj.float().t() / temp  # (b, Bg)
    return sim_t2i, sim_i2t


@torch.no_grad()
def select_hard_negatives(sim_t2i: torch.Tensor, sim_i2t: torch.Tensor, anchor_pids: torch.Tensor,
                          global_pids: torch.Tensor, mode: str = "argmax",
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(neg_image_index, neg_text_index)``, (b,) int64 indices into the global batch: one negative
    image per local text and one negative text per local image.

    Same-identity entries are masked with −inf before the argmax or softmax, so a negative never
    shares the anchor's identity, even when every softmax weight of a row would underflow.

    Args:
        sim_t2i: (b, Bg) local texts vs global images.
        sim_i2t: (b, Bg) local images vs global texts.
        anchor_pids: (b,) identity of each local pair.
        global_pids: (Bg,) identity of each global pair.
        mode: ``"argmax"`` (reference: the hardest negative) or ``"multinomial"`` (BLIP: sampled
            from the softmax over the allowed entries).
        generator: random generator for ``"multinomial"``; must live on the sims' device.

    Raises:
        ValueError: on bad shapes or an unknown mode.
        RuntimeError: an anchor's identity covers the whole global batch (no negative exists).
    """
    if mode not in ("argmax", "multinomial"):
        raise ValueError(f"unknown hard-negative mode {mode!r}; expected 'argmax' or 'multinomial'")
    expected = (anchor_pids.shape[0], global_pids.shape[0])
    for name, sims in (("sim_t2i", sim_t2i), ("sim_i2t", sim_i2t)):
        if tuple(sims.shape) != expected:
            raise ValueError(f"{name} must be (b, Bg) = {expected}, got {tuple(sims.shape)}")
    same_identity = anchor_pids[:, None] == global_pids[None, :]  # (b, Bg)
    # checked on the device, without reading back to the host (an async assert on CUDA); batches of one
    # identity are also refused when the config is loaded (data.instances_per_id)
    torch._assert_async(~same_identity.all(dim=1).any(), "no hard negative: a local pair's identity covers the "
                        "whole global batch; batches need at least two identities")
    neg_image_index = _pick(sim_t2i.float().masked_fill(same_identity, float("-inf")), mode, generator)
    neg_text_index = _pick(sim_i2t.float().masked_fill(same_identity, float("-inf")), mode, generator)
    return neg_image_index, neg_text_index


def _pick(masked_sims: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """Row-wise argmax or softmax draw over (b, Bg) scores with −inf at forbidden entries."""
    if mode == "argmax":
        return masked_sims.argmax(dim=1)
    # Every row has a finite maximum, which gets softmax weight ≥ 1/Bg: no all-zero rows.
    weights = F.softmax(masked_sims, dim=1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the match head, ``(1 / (b + n)) Σ CE(logits, [1]*b + [0]*n)``.

    Args:
        pos_logits: (b, 2) ``itm_head`` logits of the positive pairs.
        neg_logits: (n, 2) logits of the negative pairs (2b in the reference).
    """
    if pos_logits.ndim != 2 or pos_logits.shape[1] != 2 or neg_logits.ndim != 2 or neg_logits.shape[1] != 2:
        raise ValueError(f"ITM logits must be (n, 2); got pos {tuple(pos_logits.shape)}, "
                         f"neg {tuple(neg_logits.shape)}")
    logits = torch.cat([pos_logits, neg_logits], dim=0).float()  # (b + n, 2)
    labels = torch.cat([torch.ones(pos_logits.shape[0], dtype=torch.long, device=logits.device),
                        torch.zeros(neg_logits.shape[0], dtype=torch.long, device=logits.device)])
    return F.cross_entropy(logits, labels)
