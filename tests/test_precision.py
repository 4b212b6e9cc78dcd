"""Mixed precision: the loss similarities stay fp32 under autocast; TF32 is set on CUDA only."""
import torch

from models.losses.global_alignment import global_alignment_loss
from models.losses.itm import itm_similarities
from utils.precision import autocast, set_tf32


def features(rows: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, 64, generator=generator), dim=-1)


def test_similarity_products_are_fp32_under_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    image, text = features(8, generator), features(8, generator)
    image[1] = text[1] = image[0]  # a logit of exactly the scale, 50: bf16 would round the others near it
    person_ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with autocast(torch.device("cpu"), "bf16"):
        loss_bf16 = global_alignment_loss(image, text, person_ids)
        sims_bf16 = itm_similarities(image[:4], text[:4], image, text)
    assert loss_bf16.dtype == torch.float32 and sims_bf16[0].dtype == torch.float32
    assert torch.equal(loss_bf16, global_alignment_loss(image, text, person_ids))
    for under_autocast, plain in zip(sims_bf16, itm_similarities(image[:4], text[:4], image, text)):
        assert torch.equal(under_autocast, plain)
    # what autocast alone would give: bf16 products, off by a visible fraction of a logit
    with autocast(torch.device("cpu"), "bf16"):
        rounded = 50 * image @ text.t()
    assert (rounded.float() - 50 * image @ text.t()).abs().max() > 1e-2


def test_tf32_is_a_cuda_setting_only():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        set_tf32(torch.device("cpu"), True)
        assert torch.backends.cuda.matmul.allow_tf32 is False
        set_tf32(torch.device("cuda", 0), True)  # the flags can be set without a GPU
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(torch.device("cuda", 0), False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
