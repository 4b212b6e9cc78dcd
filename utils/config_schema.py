"""The config tree: every option, its type, its allowed values and its default, defined once.

The defaults are the authors' reference recipe for CUHK-PEDES (method.md §3): a YAML file holds only
what differs. ``Literal[...]`` options accept only the listed values; ``Annotated[..., Range(...)]``
options are range-checked when the config is loaded, so a bad value stops the run before any data is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, NamedTuple

from utils.metrics import DEFAULT_CHUNK_SIZE
from utils.vocab import MAX_TEXT_LEN


class Range(NamedTuple):
    """Allowed interval of a number; ``None`` leaves a side open; ``open_low`` excludes ``low`` itself."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0.0, open_low=True)]
NonNegativeFloat = Annotated[float, Range(0.0)]
Probability = Annotated[float, Range(0.0, 1.0)]

Precision = Literal["off", "bf16", "fp16"]
SelectMetric = Literal["r_mean", "R1", "R5", "R10", "mAP", "mINP", "last"]


@dataclass
class ModelConfig:
    name: str = "cada_base"  # key of models.registry.MODELS
    image_size: list[PositiveInt] = field(default_factory=lambda: [224, 224])  # (H, W); reference squashes to 224
    pretrained: str = "${CADA_PRETRAINED:-checkpoints/model_base.pth}"  # BLIP/CADA weights; "" = random init
    tokenizer: str = ""  # folder or vocab.txt of another BERT tokenizer; "" = the bundled one
    max_text_len: Annotated[int, Range(3)] = MAX_TEXT_LEN
    decoder_causal: bool = True  # reference: causal self-attention in the ARA decoder


@dataclass
class SyntheticConfig:
    """The built-in synthetic set (datasets/synthetic): generated on first use, then checked against these."""

    train_ids: PositiveInt = 1600  # identities per split
    val_ids: PositiveInt = 60
    test_ids: PositiveInt = 120
    images_per_id: PositiveInt = 4
    seed: int = 0  # fixes every byte of the generated folder
    fresh_renders: bool = True  # each training photo drawn anew per (epoch, sample), captions unchanged


@dataclass
class DataConfig:
    dataset: Literal["cuhk_pedes", "icfg_pedes", "rstpreid", "synthetic"] = "cuhk_pedes"
    root: str = "${CADA_DATA_ROOT:-data}"  # folder holding CUHK-PEDES/, ICFG-PEDES/, RSTPReid/
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # read only when dataset is synthetic
    val_from_train: Annotated[float, Range(0.0, 0.9)] = 0.0  # training identities carved out as val (ICFG)
    val_seed: int = 0
    # Pairs per optimisation step over all processes and micro-batches; the reference trains CUHK-PEDES
    # at 24 per GPU x 5 GPUs. Each process gets global / (processes x train.accumulate_steps).
    global_batch_size: PositiveInt = 120
    instances_per_id: NonNegativeInt = 0  # > 0: identity-balanced batches of k images per person
    train_captions: Literal["first_two", "all"] = "first_two"  # reference: the first two captions per image
    num_workers: NonNegativeInt = 4
    resize: Literal["bilinear", "bicubic"] = "bilinear"  # reference: torchvision's default, bilinear
    flip: bool = True
    pad: NonNegativeInt = 10
    erasing: Probability = 0.5
    erasing_fill: Literal["mean", "zero"] = "mean"  # reference: the CLIP mean values, written after normalising
    eval_captions: Literal["all", "first_two"] = "all"  # first_two: the reference's CUHK-PEDES test protocol
    attribute_tagger: Literal["auto", "textblob", "lexicon", "nltk"] = "auto"
    drop_bad_captions: bool = False  # empty / all-[UNK] captions: error (false) or dropped with a count (true)
    duplicate_images: Literal["error", "warn"] = "error"  # one image under two ids or in two splits


@dataclass
class GlobalLossConfig:
    weight: NonNegativeFloat = 1.0
    scale: PositiveFloat = 50.0
    forward_kl: NonNegativeFloat = 1.0
    reverse_kl: NonNegativeFloat = 1.0
    cross_entropy: NonNegativeFloat = 1.0


@dataclass
class ITMLossConfig:
    weight: NonNegativeFloat = 1.0
    negatives: Literal["argmax", "multinomial"] = "argmax"  # argmax: reference; multinomial: BLIP
    temperature: PositiveFloat = 0.07


@dataclass
class ATPLossConfig:
    weight: NonNegativeFloat = 1.0
    mode: Literal["reference", "adaptive"] = "reference"
    groups: PositiveInt = 2
    mask_padding: bool = False


@dataclass
class ARALossConfig:
    weight: NonNegativeFloat = 0.1
    mode: Literal["token", "phrase"] = "token"
    prob: Probability = 0.4


@dataclass
class LossConfig:
    global_: GlobalLossConfig = field(default_factory=GlobalLossConfig, metadata={"key": "global"})
    itm: ITMLossConfig = field(default_factory=ITMLossConfig)
    atp: ATPLossConfig = field(default_factory=ATPLossConfig)
    ara: ARALossConfig = field(default_factory=ARALossConfig)
    # ITM and ATP (and the fused pass they share) are not computed before this optimisation step: a compute
    # saving when the fused encoder starts from random weights (reference: 0)
    local_start_step: NonNegativeInt = 0

    def weights(self) -> dict[str, float]:
        """Each loss term's weight by name; a weight of 0 switches the term off."""
        return {"global": self.global_.weight, "itm": self.itm.weight, "atp": self.atp.weight,
                "ara": self.ara.weight}

    def enabled(self) -> tuple[str, ...]:
        """Names of the terms with a positive weight."""
        return tuple(name for name, weight in self.weights().items() if weight > 0)


@dataclass
class OptimConfig:
    lr: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 0.05
    betas: list[Annotated[float, Range(0.0, 0.999999)]] = field(default_factory=lambda: [0.9, 0.999])
    eps: PositiveFloat = 1e-8
    decay_norm_and_bias: bool = True  # reference: weight decay on every parameter
    new_head_lr_mult: PositiveFloat = 1.0  # lr multiplier for heads absent from the pre-trained weights
    # cosine_per_epoch (reference): lr_e = min + (lr - min) * (1 + cos(pi e / E)) / 2, set once per epoch;
    # cosine_per_step: the same curve evaluated at every optimisation step.
    schedule: Literal["cosine_per_epoch", "cosine_per_step"] = "cosine_per_epoch"
    warmup_steps: NonNegativeInt = 0
    min_lr: NonNegativeFloat = 0.0


@dataclass
class TrainConfig:
    epochs: PositiveInt = 30
    output_dir: str = "outputs/run"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Precision = "off"
    tf32: bool = True  # CUDA only: fp32 matmuls and convolutions in TF32 (utils/precision.py)
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False
    accumulate_steps: PositiveInt = 1
    clip_grad_norm: NonNegativeFloat = 0.0  # 0 = off
    save_every_steps: NonNegativeInt = 0  # 0 = only at the end of each epoch
    resume: str = "auto"  # "" | auto | path to a checkpoint
    max_nonfinite_steps: NonNegativeInt = 0  # steps with a NaN/inf loss skipped before the run stops
    log_every: PositiveInt = 50
    eval_every: PositiveInt = 1  # epochs between val evaluations
    select_metric: SelectMetric = "r_mean"  # val metric that picks best.pth (reference: mean of R1, R5, R10)


@dataclass
class EvalConfig:
    split: Literal["val", "test"] = "test"
    batch_size: PositiveInt = 64
    k_test: PositiveInt = 16
    rerank: bool = True
    amp: Precision = "off"
    chunk_size: PositiveInt = DEFAULT_CHUNK_SIZE  # queries scored at once; bounds memory
    rerank_batch_queries: PositiveInt = 16
    image_tokens_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    image_tokens_device: str = "auto"  # auto | cpu | cuda | cuda:N
    image_to_text: bool = False
    visualize: NonNegativeInt = 0  # number of queries drawn as PNG grids
    visualize_mode: Literal["random", "worst", "ids"] = "random"
    visualize_ids: list[NonNegativeInt] = field(default_factory=list)
    # queries explained: Grad-CAM panels of each caption against its best-ranked true match (engine/explain.py),
    # and the pointing game where the annotation has part regions (the synthetic set)
    explain: NonNegativeInt = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
