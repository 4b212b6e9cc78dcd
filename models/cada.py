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
from models.losses.itm import itm_loss, itm_similarities, select_hard_negatives
from models.padding import longest_caption, trim_to_longest
from models.registry import ModelSpec
from utils.config_schema import LossConfig
from utils.dist import all_gather_no_grad, all_gather_with_grad, get_world_size
from utils.vocab import ENC_ID, IGNORE_INDEX


class CADA(CADABackbone):
    """The CADA model: ``forward(batch)`` returns ``{name: scalar loss}`` for each term whose weight in
    ``objective`` (the config's ``loss`` section) is positive; the caller applies the weights."""

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
        text_proj = self.project_text(self.encode_text(*trim_to_longest(ids, mask, length=length)))  # (b, 256)
        labels_all = all_gather_no_grad(labels)  # (B,)
        losses = {}
        if "global" in wanted:
            losses["global"] = global_alignment_loss(
                all_gather_with_grad(F.normalize(image_proj, dim=-1)),
                all_gather_with_grad(F.normalize(text_proj, dim=-1)),
                labels_all, scale=settings.global_.scale,
                weights=(settings.global_.forward_kl, settings.global_.reverse_kl, settings.global_.cross_entropy))
        if wanted & {"itm", "atp"}:
            losses.update(self._local_losses(ids, mask, labels, labels_all, image_embeds, image_proj, text_proj,
                                             length))
        if "ara" in wanted:
            losses["ara"] = self._ara_loss(batch, image_embeds, length)
        return losses

    def fused_pass_trimmable(self) -> bool:
        """Whether the training fused pass may drop trailing padding: reference ATP averages fixed
        position windows of the full padded length (padding included, or windows placed by L), so
        only without ATP or with adaptive ATP (padding masked, groups from the valid tokens) is it exact."""
        return "atp" not in self.losses or self.objective.atp.mode == "adaptive"

    def _local_losses(self, ids, mask, labels, labels_all, image_embeds, image_proj, text_proj, length: int):
        """ITM and ATP on one fused pass over 3b pairs: the b positives (T_i, I_i), then each text with its
        hardest negative image (T_i, I⁻_i), then each image with its hardest negative text (T⁻_i, I_i), the
        negatives chosen from the global batch. ``length`` is the longest local caption."""
        settings = self.objective
        b = ids.shape[0]
        enc_ids = ids.clone()
        enc_ids[:, 0] = ENC_ID
        with torch.no_grad():
            sim_t2i, sim_i2t = itm_similarities(image_proj, text_proj, all_gather_no_grad(image_proj),
                                                all_gather_no_grad(text_proj), settings.itm.temperature)  # (b, B)
            neg_image, neg_text = select_hard_negatives(sim_t2i, sim_i2t, labels, labels_all,
                                                        mode=settings.itm.negatives)
        ids_all, mask_all = all_gather_no_grad(enc_ids), all_gather_no_grad(mask)  # (B, L) at the padded length
        pair_ids = torch.cat([enc_ids, enc_ids, ids_all[neg_text]])  # (3b, L)
        pair_mask = torch.cat([mask, mask, mask_all[neg_text]])
        if self.fused_pass_trimmable():  # texts from other processes may be longer than the local ones
            pair_ids, pair_mask = trim_to_longest(pair_ids, pair_mask,
                                                  length=length if get_world_size() == 1 else None)
        images, pair_image = self._pair_images(image_embeds, neg_image)
        fused = self.fuse(pair_ids, pair_mask, images, image_index=pair_image)  # (3b, L', D)
        is_match = (torch.arange(3 * b, device=ids.device) < b).long()  # (3b,) 1 for the positives
        losses = {}
        if "itm" in self.losses:
            logits = self.itm_head(fused[:, 0]).float()  # (3b, 2)
            losses["itm"] = itm_loss(logits[:b], logits[b:])
        if "atp" in self.losses:
            losses["atp"] = self._atp_loss(fused, pair_mask, is_match)
        return losses

    @staticmethod
    def _pair_images(image_embeds: torch.Tensor, neg_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct images of the 3b pairs (U, 1+N, Dv) and each pair's index into them (3b,).

        Cross-attention projects each distinct image's keys and values once: U = b at world size 1 (every
        negative image is a local one), else U = 2b (the local images, then the gathered negatives).
        """
        b = image_embeds.shape[0]
        own = torch.arange(b, device=image_embeds.device)
        if get_world_size() == 1:
            return image_embeds, torch.cat([own, neg_image, own])
        negatives = all_gather_with_grad(image_embeds)[neg_image]  # (b, 1+N, Dv), gradients reach their owner
        return torch.cat([image_embeds, negatives]), torch.cat([own, own + b, own])

    def _atp_loss(self, fused: torch.Tensor, pair_mask: torch.Tensor, is_match: torch.Tensor) -> torch.Tensor:
        """ATP on the fused states (3b, L, D) of the ITM pairs, scored group by group (models/losses/atp.py)."""
        atp = self.objective.atp
        groups, valid = atp_group_features(fused, pair_mask, mode=atp.mode, groups=atp.groups,
                                           mask_padding=atp.mask_padding)  # (3b, G, D), (3b, G)
        if atp.mode == "reference":
            return atp_loss_reference(self.itm_local_head(groups).float(), is_match,
                                      valid if atp.mask_padding else None)
        return self.adaptive_atp(groups, valid, is_match, self.itm_local_head)[0]

    def _ara_loss(self, batch, image_embeds, length: int):
        """Predicts masked attribute words; the vocabulary projection runs on masked positions only.

        The causal decoder runs on the captions trimmed to ``length``: padding comes after every real
        token and is a masked key, so no kept position depends on it (docs/method.md, padding trimming).
        ``batch["ara_positions"]`` (2, M), the (row, column) of each masked word if found on the host, saves
        the device a read-back (a boolean mask's count).
        """
        ara_ids, mask, labels = trim_to_longest(batch["ara_input_ids"], batch["attention_mask"], batch["ara_labels"],
                                                length=length)  # (b, L'); labels IGNORE_INDEX where not masked
        hidden = self.decoder_hidden(ara_ids, mask, image_embeds)  # (b, L', D)
        positions = batch.get("ara_positions")
        rows, columns = (labels != IGNORE_INDEX).nonzero(as_tuple=True) if positions is None else positions
        logits = self.decoder_logits(hidden[rows, columns])  # (M, V)
        return ara_loss(logits.float().unsqueeze(0), labels[rows, columns].unsqueeze(0))
