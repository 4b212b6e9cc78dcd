"""Two gloo processes on CPU compute the same losses and gradients as one process holding the global batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import models.cada
from datasets.ara_masking import mask_attribute_tokens, pack_candidate_groups
from models.cada import CADA
from models.registry import get_model_spec
from utils.dist import all_gather_with_grad, get_world_size, init_distributed

GLOBAL_BATCH, LENGTH, SIZE = 8, 16, (64, 32)


def global_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 3000, (GLOBAL_BATCH, LENGTH), generator=generator)
    ids[:, 0] = 101
    mask = torch.ones(GLOBAL_BATCH, LENGTH, dtype=torch.long)
    groups = pack_candidate_groups([[[2], [4, 5], [7]]] * GLOBAL_BATCH, LENGTH)
    ara_ids, ara_labels = mask_attribute_tokens(ids, groups, prob=1.0)  # same masked count on every sample
    # labels 0,0,0,0 on rank 0 and 1,1,1,1 on rank 1: every negative of a rank-0 anchor lives on rank 1
    return {"image": torch.randn(GLOBAL_BATCH, 3, *SIZE, generator=generator), "input_ids": ids,
            "attention_mask": mask, "label": torch.arange(GLOBAL_BATCH) // 4, "ara_input_ids": ara_ids,
            "ara_labels": ara_labels}


def build_model() -> CADA:
    torch.manual_seed(0)
    return CADA(get_model_spec("cada_tiny"), SIZE, None)


def losses_and_grads(model: CADA, batch: dict) -> tuple[dict, dict]:
    losses = model(batch)
    sum(losses.values()).backward()
    return ({k: v.detach() for k, v in losses.items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed("cpu")
    picked = []
    original = models.cada.select_hard_negatives
    models.cada.select_hard_negatives = lambda *a, **k: picked.append(original(*a, **k)) or picked[-1]
    batch = {k: v[rank * 4:(rank + 1) * 4] for k, v in global_batch().items()}
    model = build_model()
    losses, grads = losses_and_grads(model, batch)
    for value in [*losses.values(), *grads.values()]:  # what DDP does: average over ranks
        dist.all_reduce(value)
        value /= 2
    evaluation = evaluate_small_set(model, out_dir)  # gallery and queries sharded over the two ranks
    torch.save((losses, grads if rank == 0 else None, picked[0], evaluation), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def evaluate_small_set(model, folder) -> dict:
    from pathlib import Path

    from datasets.tokenization import build_tokenizer
    from datasets.transforms import build_image_transform
    from engine.evaluator import evaluate
    from tests.test_two_stage import make_set
    from utils.config import EvalConfig

    dataset = make_set(Path(folder))
    options = EvalConfig(batch_size=4, k_test=4, chunk_size=5, rerank_batch_queries=3)
    results = evaluate(model.eval(), dataset, build_tokenizer(), build_image_transform(SIZE, train=False), options,
                       torch.device("cpu"))
    return {key: results[key] for key in ("global", "reranked", "global_per_query", "reranked_per_query")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_global_batch(tmp_path):
    single_losses, single_grads = losses_and_grads(build_model(), global_batch())
    single_eval = evaluate_small_set(build_model(), tmp_path)  # also writes the images the workers read
    context = mp.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, port, str(tmp_path))) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0
    reports = {rank: torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)}

    distributed_losses, distributed_grads, _, distributed_eval = reports[0]
    assert distributed_losses.keys() == single_losses.keys() == {"global", "itm", "atp", "ara"}
    for name, value in single_losses.items():
        torch.testing.assert_close(distributed_losses[name], value, atol=1e-5, rtol=1e-5)
    for name, grad in single_grads.items():
        torch.testing.assert_close(distributed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # rank 0 holds person 0 only: its hard negatives (global indices) must come from rank 1 (indices 4..7)
    # evaluation sharded over ranks gives the single-process results
    assert reports[1][3]["reranked"] == distributed_eval["reranked"]
    for stage in ("global", "reranked"):
        for name, value in single_eval[stage].items():
            assert abs(distributed_eval[stage][name] - value) < 1e-4, (stage, name)
        assert torch.equal(single_eval[stage + "_per_query"]["first_positive_rank"],
                           distributed_eval[stage + "_per_query"]["first_positive_rank"])
    negative_images, negative_texts = reports[0][2]
    assert (negative_images >= 4).all() and (negative_texts >= 4).all()
    negative_images, negative_texts = reports[1][2]
    assert (negative_images < 4).all() and (negative_texts < 4).all()


def test_helpers_are_identities_without_process_group():
    tensor = torch.randn(3, 2, requires_grad=True)
    assert get_world_size() == 1
    assert all_gather_with_grad(tensor) is tensor
