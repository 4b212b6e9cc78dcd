"""Config → objects: the data splits, datasets, tokenizer, model and optimizer that the jobs (training,
evaluation, folder search) are built from; the modules below them get explicit arguments or their own
sub-config."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from datasets.ara_masking import pack_candidate_groups
from datasets.attributes import attribute_candidates, build_tagger
from datasets.person_search import RetrievalSet, TrainPairs, split_records
from datasets.records import PersonRecord
from datasets.registry import dataset_dir, load_records, training_image_loader
from datasets.tokenization import build_tokenizer
from datasets.transforms import build_image_transform
from datasets.validation import validate_splits
from models.cada import CADA
from models.checkpoint_import import load_pretrained
from models.registry import get_model_spec
from utils.config import Config
from utils.dist import main_process_result
from utils.errors import ConfigError

log = logging.getLogger(__name__)


def load_splits(config: Config, needed: tuple[str, ...] | None = None) -> dict[str, list[PersonRecord]]:
    """Reads the annotation (the registry generates the synthetic set on first use), splits it and validates it
    before any training or evaluation: ``needed`` splits (default train and ``eval.split``) non-empty, images,
    captions, duplicates (``datasets.validation``)."""
    folder = dataset_dir(config.data.dataset, config.data.root)
    records = load_records(config.data.dataset, config.data.root, check_images=False,  # validate_splits does
                           synthetic=config.data.synthetic)
    splits = split_records(records, config.data.val_from_train, config.data.val_seed)
    splits = main_process_result(lambda: validate_splits(  # image headers read once, by rank 0
        splits, needed or ("train", config.eval.split), tokenizer_for(config), config.model.max_text_len,
        str(folder), config.data.drop_bad_captions, config.data.duplicate_images, show_progress=True))
    for name, part in splits.items():
        log.info("%s: %d images, %d identities, %d captions", name, len(part), len({r.person_id for r in part}),
                 sum(len(r.captions) for r in part))
    return splits


def micro_batch_size(config: Config, world_size: int) -> int:
    """Pairs per process and forward pass: global batch / (processes x accumulation steps).

    Raises ConfigError when that does not divide; warns when accumulation draws the in-batch negatives
    (global loss, ITM hard negatives) from smaller batches than the reference's.
    """
    data, accumulate = config.data, config.train.accumulate_steps
    parts = world_size * accumulate
    if data.global_batch_size % parts:
        raise ConfigError(f"data.global_batch_size {data.global_batch_size} does not split over {world_size} "
                          f"process(es) x {accumulate} accumulation step(s); choose a multiple of {parts}")
    micro = data.global_batch_size // parts
    if data.instances_per_id and (micro * world_size) % data.instances_per_id:
        raise ConfigError(f"data.instances_per_id {data.instances_per_id} does not divide the {micro * world_size} "
                          f"pairs of one forward pass over all processes")
    if accumulate > 1:
        log.warning("train.accumulate_steps=%d: the global loss and the ITM hard negatives see %d pairs per "
                    "forward pass, not the global batch of %d (results differ from the reference recipe)",
                    accumulate, micro * world_size, data.global_batch_size)
    return micro


def build_model(config: Config, load_weights: bool = True, weights: str | Path | None = None,
                checkpoint: dict | None = None) -> CADA:
    """Builds the model and loads ``weights`` (default ``model.pretrained``: BLIP, CADA or our checkpoints).

    ``checkpoint`` is the content of ``weights`` when the caller has already read the file.
    """
    model = CADA(get_model_spec(config.model.name), tuple(config.model.image_size), config.loss,
                 decoder_causal=config.model.decoder_causal, grad_checkpointing=config.train.grad_checkpointing)
    path = weights or config.model.pretrained
    if load_weights and path:
        load_pretrained(model, path, allow_missing=model.new_parameter_prefixes(), checkpoint=checkpoint)
    return model


def leaves_parameters_unused(config: Config, local_terms_computed: bool) -> bool:
    """Whether some parameters get no gradient in a step (DDP's ``find_unused_parameters``, which costs a graph
    traversal per step): every module is used only when all four losses are on (global: projections; itm:
    itm_head; atp: itm_local_head and the adaptive head; itm/atp: cross-attention; ara: the decoder) and ITM/ATP
    are computed in this step (from ``loss.local_start_step`` on)."""
    return set(config.loss.enabled()) != {"global", "itm", "atp", "ara"} or not local_terms_computed


def build_train_set(config: Config, records: list[PersonRecord], tokenizer) -> TrainPairs:
    data = config.data
    groups = None
    if config.loss.ara.weight > 0:
        tagger = build_tagger(data.attribute_tagger)

        def groups(captions: list[str]):
            return pack_candidate_groups([attribute_candidates(c, tokenizer, tagger, mode=config.loss.ara.mode,
                                                               max_len=config.model.max_text_len) for c in captions],
                                         config.model.max_text_len)
    return TrainPairs(records, build_image_transform(tuple(config.model.image_size), train=True, flip=data.flip,
                                                     pad=data.pad, erasing=data.erasing, resize=data.resize,
                                                     erasing_fill=data.erasing_fill),
                      tokenizer, config.model.max_text_len, captions=data.train_captions, candidate_groups=groups,
                      mask_prob=config.loss.ara.prob,
                      load_image=training_image_loader(data.dataset, data.root, data.synthetic))


def build_retrieval_set(config: Config, records: list[PersonRecord]) -> RetrievalSet:
    return RetrievalSet.from_records(records, captions=config.data.eval_captions)


def build_eval_transform(config: Config):
    return build_image_transform(tuple(config.model.image_size), train=False, resize=config.data.resize)


def is_norm_bias_or_embedding(name: str, param: torch.nn.Parameter) -> bool:
    """Biases and norm scales (1-D), ViT position/class tokens and BERT embedding tables."""
    return param.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) or ".embeddings." in name


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with optional no-decay group (biases, norms, embeddings) and an lr multiplier for new heads."""
    optim = config.optim
    new_prefixes = model.new_parameter_prefixes() if config.model.pretrained else ()
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = not optim.decay_norm_and_bias and is_norm_bias_or_embedding(name, param)
        lr = optim.lr * (optim.new_head_lr_mult if name.startswith(new_prefixes) else 1.0)
        groups.setdefault((lr, 0.0 if no_decay else optim.weight_decay), []).append(param)
    param_groups = [{"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd}
                    for (lr, wd), params in groups.items()]
    # One fused kernel per step on CPU (5.7x faster than the per-tensor loop at cada_tiny size) and on CUDA;
    # the arithmetic is AdamW's, equal to the loop up to float rounding (tests/test_training_parts.py).
    devices = {p.device.type for group in param_groups for p in group["params"]}
    fused = devices <= {"cpu", "cuda"} or None
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused)


def tokenizer_for(config: Config):
    return build_tokenizer(config.model.tokenizer)
