"""CADA: the backbone's encoders plus the training objective, returning a dict of named losses.

Losses (method.md §2): ``global`` (alignment of projected [CLS] features), ``itm`` (match / no match on the
fused first token, hardest negatives from the global batch), ``atp`` (text tokens → image patches: match
scores of groups of fused token states) and ``ara`` (image regions → text attributes: masked attribute
words predicted by the image-conditioned decoder). Weights are applied by the caller, by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.cada_backbone import CADABackbone
from models.losses.ara import ara_loss
from models.losses.atp import AdaptiveATP, atp_group_features, atp_loss_reference
from models.losses.global_alignment import global_alignment_loss
from models.losses.itm import anchor_count, itm_loss, itm_similarities, select_hard_negatives
from models.padding import longest_caption, trim_to_longest
from models.registry import ModelSpec
from utils.config_schema import LossConfig
from utils.dist import all_gather_no_grad, all_gather_with_grad, get_world_size
from utils.vocab import ENC_ID, IGNORE_INDEX


class CADA(CADABackbone):
    """The CADA model. ``forward(batch)`` returns ``{name: scalar loss}`` for the enabled losses.

    Args:
        spec: module sizes (see :mod:`models.registry`).
        image_size: (H, W) of input images.
        objective: the ``loss`` section of the config; a term is computed when its weight is positive
            (the weights themselves are applied by the caller).
        decoder_causal, grad_checkpointing: as for :class:`CADABackbone`.
    """

    def __init__(self, spec: ModelSpec, image_size: tuple[int, int], objective: LossConfig | None = None,
                 decoder_causal: bool = True, grad_checkpointing: bool = False):
        super().__init__(spec, image_size, decoder_causal=decoder_causal, grad_checkpointing=grad_checkpointing)
        self.objective = objective or LossConfig()
        self.losses = self.objective.enabled()
        if "atp" in self.losses and self.objective.atp.mode == "adaptive":
            self.adaptive_atp = AdaptiveATP(spec.text_width)

    def new_parameter_prefixes(self) -> tuple[str, ...]:
        """Parameters that no pre-trained checkpoint holds (BLIP lacks the ATP heads)."""
        return ("itm_local_head.", "adaptive_atp.")

    def forward(self, batch: dict[str, torch.Tensor], local: bool = True) -> dict[str, torch.Tensor]:
        """Losses of a batch; ``batch["text_length"]`` (int, optional) is the longest caption, if known
        on the host (saves reading it back from the device). ``local=False`` leaves out ITM and ATP and
        their fused pass (before ``loss.local_start_step``)."""
        settings, wanted = self.objective, set(self.losses)
        if not local:
            wanted -= {"itm", "atp"}
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["label"]
        length = batch.get("text_length")
        length = longest_caption(mask) if length is None else int(length)
        image_embeds = self.encode_image(batch["image"])  # (b, 1+N, Dv)
        image_proj = self.project_image(image_embeds)  # (b, 256) unnormalised
        # only [CLS] is projected: its last layer alone, unless dropout would then draw other random numbers
        cls_only = not self.training or self.spec.dropout == 0
        text_proj = self.project_text(self.encode_text(*trim_to_longest(ids, mask, length=length),
                                                       first_token_only=cls_only))  # (b, 256)
        labels_all = all_gather_no_grad(labels)  # (B,)
        losses = {}
        if "global" in wanted:
            losses["global"] = global_alignment_loss(
                all_gather_with_grad(F.normalize(image_proj, dim=-1)),
                all_gather_with_grad(F.normalize(text_proj, dim=-1)),
                labels_all, scale=settings.global_.scale,
                weights=(settings.global_.forward_kl, settings.global_.reverse_kl, settings.global_.cross_entropy))
        if wanted & {"itm", "atp"}:
            if self.fused_pass_trimmable():
                ids, mask = trim_to_longest(ids, mask, length=length)
            swapped = self._colour_swapped(batch, ids.shape[1])
            losses.update(self._local_losses(ids, mask, labels, labels_all, image_embeds, image_proj, text_proj,
                                             swapped))
        if "ara" in wanted:
            losses["ara"] = self._ara_loss(batch, image_embeds, length)
        return losses

    def fused_pass_trimmable(self) -> bool:
        """Whether the training fused pass may drop trailing padding: reference ATP averages fixed
        position windows of the full padded length (padding included, or windows placed by L), so
        only without ATP or with adaptive ATP (padding masked, groups from the valid tokens) is it exact."""
        return "atp" not in self.losses or self.objective.atp.mode == "adaptive"

    def _colour_swapped(self, batch, length: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(swap_input_ids (b, length), swap_valid (b,))`` when ``loss.itm.colour_swap_negatives`` is on."""
        if not (self.objective.itm.colour_swap_negatives and "itm" in self.losses):
            return None
        if "swap_input_ids" not in batch:
            raise ValueError("loss.itm.colour_swap_negatives is on but the batch has no swap_input_ids "
                             "(build the training set with engine.builders.build_train_set)")
        return batch["swap_input_ids"][:, :length], batch["swap_valid"]

    def _local_losses(self, ids, mask, labels, labels_all, image_embeds, image_proj, text_proj, swapped=None):
        """ITM and ATP share the fused passes over m positive and 2m hardest-negative pairs, where the
        m anchors are the first ``loss.local_pairs_fraction`` of the b local pairs (all of them in the
        reference) and the negatives come from the whole global batch. With ``swapped`` (colour-swapped
        captions, see datasets/colour_swap.py) m more pairs, each anchor's image with its own caption
        one colour wrong, are ITM negatives too (not ATP's: all but one of their groups do match)."""
        settings = self.objective
        b = ids.shape[0]
        m = anchor_count(b, settings.local_pairs_fraction)
        enc_ids = ids.clone()
        enc_ids[:, 0] = ENC_ID
        with torch.no_grad():
            sim_t2i, sim_i2t = itm_similarities(image_proj[:m], text_proj[:m], all_gather_no_grad(image_proj),
                                                all_gather_no_grad(text_proj), settings.itm.temperature)  # (m, B)
            neg_image, neg_text = select_hard_negatives(sim_t2i, sim_i2t, labels[:m], labels_all,
                                                        mode=settings.itm.negatives)
        image_embeds_all = all_gather_with_grad(image_embeds)  # (B, 1+N, Dv), gradients reach the owner
        ids_all, mask_all = all_gather_no_grad(enc_ids), all_gather_no_grad(mask)
        enc_ids, mask = enc_ids[:m], mask[:m]
        # negatives: each text with its hardest image, then each image with its hardest text
        neg_ids = torch.cat([enc_ids, ids_all[neg_text]])  # (2m, L)
        neg_mask = torch.cat([mask, mask_all[neg_text]])
        # the 3m pairs use at most 2m distinct images (b at world size 1): project each one's keys/values once
        own = torch.arange(m, device=ids.device)
        if get_world_size() == 1:
            distinct, pair_image = image_embeds, torch.cat([own, neg_image, own])
        else:
            distinct = torch.cat([image_embeds[:m], image_embeds_all[neg_image]])
            pair_image = torch.cat([own, own + m, own])
        pair_ids, fused_mask = torch.cat([enc_ids, neg_ids]), torch.cat([mask, neg_mask])  # the 3m pairs' texts
        pair_mask = fused_mask
        if swapped is not None:  # then each anchor's image with its colour-swapped caption
            swap_ids = swapped[0][:m].clone()
            swap_ids[:, 0] = ENC_ID
            pair_ids, pair_mask = torch.cat([pair_ids, swap_ids]), torch.cat([pair_mask, mask])
            pair_image = torch.cat([pair_image, own])
        fused = self.fuse(pair_ids, pair_mask, distinct, image_index=pair_image)  # (3m or 4m, L, D): pairs as listed
        is_match = torch.cat([torch.ones(m, dtype=torch.long), torch.zeros(2 * m, dtype=torch.long)]).to(ids.device)
        losses = {}
        if "itm" in self.losses:
            logits = self.itm_head(fused[:, 0]).float()  # (3m, 2), or (4m, 2) with colour swaps
            neg_valid = None if swapped is None else torch.cat([torch.ones(2 * m, dtype=torch.bool,
                                                                           device=ids.device), swapped[1][:m]])
            losses["itm"] = itm_loss(logits[:m], logits[m:], neg_valid)
        fused = fused[:3 * m]
        if "atp" in self.losses:
            atp = settings.atp
            groups, valid = atp_group_features(fused, fused_mask, mode=atp.mode, groups=atp.groups,
                                               mask_padding=atp.mask_padding)  # (3b, G, D), (3b, G)
            if atp.mode == "reference":
                losses["atp"] = atp_loss_reference(self.itm_local_head(groups).float(), is_match,
                                                   valid if atp.mask_padding else None)
            else:
                losses["atp"], _ = self.adaptive_atp(groups, valid, is_match, self.itm_local_head)
        return losses

    def _ara_loss(self, batch, image_embeds, length: int):
        """Predicts masked attribute words; the vocabulary projection runs on masked positions only.

        The causal decoder runs on the captions trimmed to ``length``: padding comes after every real
        token and is a masked key, so no kept position depends on it (docs/method.md, padding trimming).
        """
        ara_ids, mask, labels = trim_to_longest(batch["ara_input_ids"], batch["attention_mask"], batch["ara_labels"],
                                                length=length)  # (b, L'); labels IGNORE_INDEX where not masked
        hidden = self.decoder_hidden(ara_ids, mask, image_embeds)  # (b, L', D)
        selected = labels != IGNORE_INDEX
        logits = self.decoder_logits(hidden[selected])  # (M, V)
        return ara_loss(logits.float().unsqueeze(0), labels[selected].unsqueeze(0))
