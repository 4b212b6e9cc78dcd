"""Explaining matches: per-word Grad-CAM heatmaps of (caption, photo) pairs drawn as panels, and the pointing game.

Reached from ``eval.explain=N`` (N queries of the split, each caption against its best-ranked true match; panels
in ``visualize/`` beside the grids, and on annotations with part regions a ``pointing`` section in
``results.json``) and from ``retrieve.py --explain`` (the top results of a search). The maps are those of
:mod:`engine.gradcam`; a word's **share** of the match score is its part of the caption's positive Grad-CAM mass
in the chosen layer,

    share_w = Σ_n cam_w[n] / Σ_{w'} Σ_n cam_{w'}[n]        (w' over the caption's words; [ENC], [SEP] left out)

so the shares of all words add up to 1. Panels show the content words only (not :data:`STOP_WORDS`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.images import load_rgb
from datasets.person_search import RetrievalSet
from datasets.records import PersonRecord, clean_caption
from datasets.tokenization import encode
from engine.builders import build_eval_transform, tokenizer_for
from engine.gradcam import (
    caption_words,
    decoder_gradcam,
    default_layer,
    itm_gradcam,
    merge_word_pieces,
    to_grid,
    upsample,
)
from engine.heatmap_panel import Cell, draw_panel
from engine.pointing import PointingTally
from engine.visualize import save_pages
from utils.config import Config
from utils.vocab import ENC_ID

log = logging.getLogger(__name__)

STOP_WORDS = frozenset("""a an the this that and or but of in on at to with without by for from as is are was
were be been being has have had he she his her him hers they their it its who which there here also one pair
wears wearing wear worn dressed carries carrying carry holding holds not no some""".split())


@dataclass
class Explanation:
    """Heatmaps of one (caption, photo) pair on the patch grid.

    Attributes:
        words: the caption's space-separated words.
        maps: (W, h, w) ITM Grad-CAM per word.
        match_logit: the ITM match logit of the pair.
        content: indices of the content words (not stop words).
        decoder_maps: (C, h, w) decoder Grad-CAM per content word (that word masked), or None.
        decoder_log_probability: (C,) the decoder's log-probability of each masked content word, or None.
    """

    words: list[str]
    maps: torch.Tensor
    match_logit: float
    content: list[int]
    decoder_maps: torch.Tensor | None = None
    decoder_log_probability: torch.Tensor | None = None

    def shares(self) -> torch.Tensor:
        """(W,) each word's share of the positive Grad-CAM mass (module docstring); zeros when there is none."""
        mass = self.maps.flatten(1).sum(dim=1)  # (W,)
        total = mass.sum()
        return mass / total if total > 0 else torch.zeros_like(mass)


def is_content_word(word: str) -> bool:
    """Whether a caption word gets a panel cell: it has a letter and is not a stop word."""
    bare = word.strip(",'-")
    return any(c.isalpha() for c in bare) and bare not in STOP_WORDS


class Explainer:
    """Computes :class:`Explanation` objects with one model.

    Args:
        model: the CADA model, in eval mode, on ``device``.
        tokenizer: from :func:`datasets.tokenization.build_tokenizer`.
        transform: the evaluation transform (PIL photo → (3, H, W)).
        with_decoder: also explain the ARA decoder (for models whose decoder was trained).
        layer: the text encoder's cross-attention layer (default :func:`engine.gradcam.default_layer`).
        decoder_layer: the decoder's (same default rule).
    """

    def __init__(self, model, tokenizer, transform, max_text_len: int, device: torch.device,
                 with_decoder: bool = False, layer: int | None = None, decoder_layer: int | None = None) -> None:
        self.model, self.tokenizer, self.transform = model, tokenizer, transform
        self.max_text_len, self.device, self.with_decoder = max_text_len, torch.device(device), with_decoder
        self.layer = default_layer(model.spec.text_layers) if layer is None else layer
        self.decoder_layer = default_layer(model.spec.decoder_layers) if decoder_layer is None else decoder_layer

    @classmethod
    def for_config(cls, model, config: Config, device: torch.device) -> Explainer:
        """The explainer of a model built from ``config`` (the decoder explained when ARA trained it)."""
        return cls(model.eval(), tokenizer_for(config), build_eval_transform(config), config.model.max_text_len,
                   device, with_decoder=config.loss.ara.weight > 0)

    def explain(self, text: str, photo) -> Explanation:
        """Heatmaps of ``text`` (a cleaned caption) for the PIL ``photo``."""
        image = self.transform(photo)[None].to(self.device)  # (1, 3, H, W)
        ids, mask = (t.to(self.device) for t in encode(self.tokenizer, [text], self.max_text_len))  # (1, L)
        words, token_words = caption_words(self.tokenizer, text, self.max_text_len)
        with torch.no_grad():
            image_embeds = self.model.encode_image(image)  # (1, 1+N, Dv)
        enc_ids = ids.clone()
        enc_ids[:, 0] = ENC_ID
        cams, logit = itm_gradcam(self.model, image_embeds, enc_ids, mask, self.layer)  # (1, L, N), (1,)
        grid = to_grid(cams[0].cpu(), image.shape[-2:], self.model.spec.vision_patch)  # (L, h, w)
        explanation = Explanation(words, merge_word_pieces(grid, token_words, len(words)), float(logit[0]),
                                  [i for i, word in enumerate(words) if is_content_word(word)])
        if self.with_decoder and explanation.content:
            positions = [(token_words == i).nonzero()[:, 0].tolist() for i in explanation.content]
            kept = [i for i, p in enumerate(positions) if p]  # words cut off by truncation have no tokens
            explanation.content = [explanation.content[i] for i in kept]
            decoder_cams, log_probability = decoder_gradcam(self.model, image_embeds, ids, mask,
                                                            [positions[i] for i in kept], self.decoder_layer)
            explanation.decoder_maps = to_grid(decoder_cams.cpu(), image.shape[-2:], self.model.spec.vision_patch)
            explanation.decoder_log_probability = log_probability.cpu()
        return explanation

    def panel(self, explanation: Explanation, photo, title: str, text: str):
        """The PIL panel: the photo, then per content word its ITM overlay (and its decoder overlay)."""
        size = (photo.height, photo.width)
        words, photo_cell = explanation.words, Cell(None, ("photo", ""))
        maps, shares = upsample(explanation.maps, size), explanation.shares()
        rows = [(f"ITM match, cross-attention layer {self.layer}: word, share of the evidence",
                 [photo_cell, *(Cell(maps[i], (words[i], f"{100 * shares[i]:.0f}%")) for i in explanation.content)])]
        if explanation.decoder_maps is not None:
            decoder_maps = upsample(explanation.decoder_maps, size)
            probabilities = [math.exp(float(lp)) for lp in explanation.decoder_log_probability]
            rows.append((f"ARA decoder, layer {self.decoder_layer}: word masked, p(word)",
                         [photo_cell, *(Cell(decoder_maps[j], (words[i], f"p={p:.2f}"))
                                        for j, (i, p) in enumerate(zip(explanation.content, probabilities)))]))
        return draw_panel(photo, title, text, rows)


def explained_queries(num_queries: int, count: int) -> list[int]:
    """``count`` query indices spread evenly over the split (the same for every model: comparable runs)."""
    count = min(count, num_queries)
    return [q * num_queries // count for q in range(count)]


def best_true_match(per_query: dict, dataset: RetrievalSet, q: int) -> tuple[int, int | None]:
    """``(gallery index, rank)`` of query q's best-ranked true match among the kept top results, else the image
    its caption describes with rank None."""
    for rank, g in enumerate(per_query["top_indices"][q].tolist(), start=1):
        if int(dataset.gallery_pids[g]) == int(dataset.query_pids[q]):
            return g, rank
    return int(dataset.query_gallery_index[q]), None


def explain_evaluation(explainer: Explainer, results: dict, dataset: RetrievalSet, records: list[PersonRecord],
                       count: int, output_dir: Path) -> dict | None:
    """Panels of ``count`` queries (``output_dir/explain_qNNNNN.png``) and, when the records carry part regions,
    the pointing-game summary (:mod:`engine.pointing`), else None."""
    stage = "reranked" if "reranked_per_query" in results else "global"
    per_query = results[f"{stage}_per_query"]
    regions = {Path(record.image_path): record.regions for record in records}
    tally = PointingTally()
    queries = explained_queries(len(dataset.query_texts), count)
    output_dir.mkdir(parents=True, exist_ok=True)
    for q in queries:
        g, rank = best_true_match(per_query, dataset, q)
        text, photo = dataset.query_texts[q], load_rgb(dataset.gallery_paths[g])
        explanation = explainer.explain(text, photo)
        where = f"{stage} rank {rank}" if rank else "its own image (no true match in the top results)"
        title = f"query {q} | person {int(dataset.query_pids[q])} | {where} | match logit {explanation.match_logit:.2f}"
        explainer.panel(explanation, photo, title, text).save(output_dir / f"explain_q{q:05d}.png")
        caption_regions = regions.get(Path(dataset.gallery_paths[int(dataset.query_gallery_index[q])]))
        image_regions = regions.get(Path(dataset.gallery_paths[g]))
        if caption_regions is not None and image_regions is not None:
            score_words(tally, explanation, caption_regions.caption_words.get(text, ()), image_regions)
    log.info("explained %d queries (%s stage) into %s", len(queries), stage, output_dir)
    return tally.summary() if tally.words else None


def score_words(tally: PointingTally, explanation: Explanation, parts, image_regions) -> None:
    """Adds each word that names a part (``parts``: per word a part name or None) to the pointing tally."""
    named = [(i, part) for i, part in enumerate(parts) if part is not None and i < len(explanation.words)]
    if not named:
        return
    maps = upsample(explanation.maps[[i for i, _ in named]], image_regions.size)  # (n, H, W)
    for heatmap, (_, part) in zip(maps, named):
        tally.add(part, heatmap, image_regions.mask(part))


def explain_search(explainer: Explainer, results, index, out_path: str | Path, top: int) -> list[Path]:
    """``retrieve.py --explain``: one PNG per query (``<out stem>_explain_<n>.png``), its text against each of its
    ``top`` best images (:func:`engine.folder_search.search`'s results over the folder ``index``)."""
    out_path = Path(out_path)
    written = []
    for number, result in enumerate(results, start=1):
        text = clean_caption(result.query)
        panels = []
        for rank, g in enumerate(result.gallery_indices[:top].tolist(), start=1):
            photo = load_rgb(index.paths[g])
            explanation = explainer.explain(text, photo)
            title = f"query {number} | rank {rank}: {index.files[g]} | match logit {explanation.match_logit:.2f}"
            panels.append(explainer.panel(explanation, photo, title, text))
        written += save_pages(panels, out_path.with_name(f"{out_path.stem}_explain_{number}.png"))
    return written
