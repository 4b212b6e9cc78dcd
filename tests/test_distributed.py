"""Two gloo processes on CPU compute the same losses and gradients as one process holding the global batch."""
import os

import pytest
import torch
import torch.distributed as dist

import models.cada
from datasets.ara_masking import mask_attribute_tokens, pack_candidate_groups
from models.cada import CADA
from models.registry import get_model_spec
from tests.helpers import run_two
from utils.dist import all_gather_no_grad, all_gather_uneven, all_gather_with_grad, get_world_size, init_distributed

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
    dist.all_gather_object = refusing_tensors(dist.all_gather_object)
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
    uneven = all_gather_uneven(torch.arange(2 + rank, dtype=torch.float64)[:, None].repeat(1, 3))  # 2 and 3 rows
    headers_read = load_splits_counting_headers(out_dir)
    torch.save((losses, grads if rank == 0 else None, picked[0], evaluation, uneven, headers_read),
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def write_cuhk_set(root) -> None:
    """A 4-image CUHK-PEDES folder: two people in train, two in test."""
    import json
    from pathlib import Path

    from PIL import Image
    folder = Path(root) / "CUHK-PEDES"
    (folder / "imgs").mkdir(parents=True)
    records = []
    for number in range(4):
        Image.new("RGB", (16, 32), (60 * number, 0, 0)).save(folder / "imgs" / f"p{number}.jpg")
        records.append({"split": "train" if number < 2 else "test", "id": number, "file_path": f"p{number}.jpg",
                        "captions": [f"a person number {number} in a red shirt"]})
    (folder / "reid_raw.json").write_text(json.dumps(records))


def load_splits_counting_headers(out_dir: str) -> tuple[int, dict]:
    """How many image headers this rank read while ``load_splits`` validated the set, and the splits' pids."""
    import datasets.validation
    from engine.builders import load_splits
    from tests.helpers import tiny_config
    from utils.config import load_config

    read = []
    original = datasets.validation.image_problem
    datasets.validation.image_problem = lambda path: read.append(path) or original(path)
    path, overrides = tiny_config(f"{out_dir}/data", f"{out_dir}/run", "data.dataset=cuhk_pedes")
    splits = load_splits(load_config(path, overrides))
    return len(read), {name: [record.person_id for record in part] for name, part in splits.items()}


def refusing_tensors(all_gather_object):
    """``dist.all_gather_object`` that fails on tensors: their pickled storages break on the receiving rank
    (and a gallery's image tokens would be pickled in full), so tensors must go through ``dist.all_gather``."""
    def gather(output, obj, *args, **kwargs):
        flat = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else [obj]
        assert not any(isinstance(item, torch.Tensor) for item in flat), f"tensor passed to all_gather_object: {obj}"
        return all_gather_object(output, obj, *args, **kwargs)
    return gather


def evaluate_small_set(model, folder) -> dict:
    from pathlib import Path

    from datasets.tokenization import build_tokenizer
    from datasets.transforms import build_image_transform
    from engine.evaluator import evaluate
    from tests.helpers import make_set
    from utils.config import EvalConfig

    dataset = make_set(Path(folder))
    options = EvalConfig(batch_size=4, k_test=4, chunk_size=5, rerank_batch_queries=3)
    results = evaluate(model.eval(), dataset, build_tokenizer(), build_image_transform(SIZE, train=False), options,
                       torch.device("cpu"))
    return {key: results[key] for key in ("global", "reranked", "global_per_query", "reranked_per_query")}


@pytest.mark.slow
def test_two_processes_match_one_process_global_batch(tmp_path):
    single_losses, single_grads = losses_and_grads(build_model(), global_batch())
    single_eval = evaluate_small_set(build_model(), tmp_path)  # also writes the images the workers read
    write_cuhk_set(tmp_path / "data")
    run_two(worker, tmp_path)
    reports = {rank: torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)}

    distributed_losses, distributed_grads, _, distributed_eval, _, _ = reports[0]
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
    expected_uneven = torch.tensor([0, 1, 0, 1, 2], dtype=torch.float64)[:, None].repeat(1, 3)
    assert torch.equal(reports[0][4], expected_uneven) and torch.equal(reports[1][4], expected_uneven)
    # image headers are read by rank 0 alone; every rank gets its validated splits
    assert reports[0][5] == (4, {"train": [0, 1], "val": [], "test": [2, 3]}) and reports[1][5] == (0, reports[0][5][1])
    negative_images, negative_texts = reports[0][2]
    assert (negative_images >= 4).all() and (negative_texts >= 4).all()
    negative_images, negative_texts = reports[1][2]
    assert (negative_images < 4).all() and (negative_texts < 4).all()


def test_helpers_are_identities_without_process_group():
    tensor = torch.randn(3, 2, requires_grad=True)
    assert get_world_size() == 1
    assert all_gather_with_grad(tensor) is tensor


def test_gathers_are_marked_to_stay_out_of_compiled_graphs():
    """torch 2.14's dynamo splits the graph at the collectives by itself (the compiled-DDP test below passes either
    way there); the disable marker is what keeps them out on torch versions that do not."""
    assert all_gather_with_grad._torchdynamo_disable and all_gather_no_grad._torchdynamo_disable


class GatheringModel(torch.nn.Module):
    """A contrastive loss over the global batch, gathered with :func:`all_gather_with_grad`, as CADA's is."""

    def __init__(self):
        super().__init__()
        self.image, self.text = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)

    def forward(self, images, texts):
        image_feats = all_gather_with_grad(torch.nn.functional.normalize(self.image(images), dim=-1))  # (B, 4)
        text_feats = all_gather_with_grad(torch.nn.functional.normalize(self.text(texts), dim=-1))
        logits = 10 * image_feats @ text_feats.t()  # (B, B)
        return torch.nn.functional.cross_entropy(logits, torch.arange(logits.shape[0]))


def compile_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed("cpu")
    data = torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(0))[:, rank * 4:(rank + 1) * 4]  # own half
    graph_ops = []

    def recording_backend(graph, example_inputs):  # what torch.compile captured, run eagerly
        graph_ops.extend(str(node.target) for node in graph.graph.nodes)
        return graph.forward

    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = torch.nn.parallel.DistributedDataParallel(GatheringModel(), gradient_as_bucket_view=True,
                                                        broadcast_buffers=False)
        run = torch.compile(net, backend=recording_backend) if compiled else net
        run(*data).backward()
        grads.append({name: p.grad.clone() for name, p in net.module.named_parameters()})
    torch.save((grads, graph_ops), f"{out_dir}/compile{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_ddp_keeps_the_gathers_out_of_the_graph_and_equals_eager(tmp_path):
    """``train.compile`` under torchrun: the gathers (collectives in forward and backward) run outside the compiled
    graphs, and the gradients equal the eager ones. The whole model compiled under two CPU processes takes many
    minutes on a 2-core machine, so this checks the mechanism on a small model (benchmarks/gpu_check.sh compiles
    the real one)."""
    run_two(compile_worker, tmp_path)
    for rank in range(2):
        (eager, compiled), graph_ops = torch.load(tmp_path / f"compile{rank}.pt", weights_only=True)
        assert graph_ops and not [op for op in graph_ops if "all_gather" in op or "all_reduce" in op], graph_ops
        for name, grad in eager.items():
            torch.testing.assert_close(compiled[name], grad, msg=name)


def test_device_choice_never_falls_back_to_the_cpu_silently(monkeypatch):
    import utils.dist
    from utils.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(utils.dist, "nvidia_devices_present", lambda: False)
    assert utils.dist.resolve_device("auto", 0, 1) == torch.device("cpu")
    monkeypatch.setattr(utils.dist, "nvidia_devices_present", lambda: True)  # a driver, but CUDA unusable
    monkeypatch.setattr(utils.dist, "cuda_unusable_reason", lambda: "the NVIDIA driver on your system is too old")
    with pytest.raises(ConfigError, match="NVIDIA devices are present but CUDA is unusable: the NVIDIA driver .* "
                                          "set train.device=cpu"):
        utils.dist.resolve_device("auto", 0, 8)
    assert utils.dist.resolve_device("cpu", 0, 8) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device=cuda but CUDA is unusable"):
        utils.dist.resolve_device("cuda", 0, 1)


def test_each_process_gets_its_own_gpu_and_cuda_n_is_for_one_process(monkeypatch):
    import utils.dist
    from utils.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert utils.dist.resolve_device("cuda", 3, 4) == torch.device("cuda", 3)
    assert utils.dist.resolve_device("auto", 2, 4) == torch.device("cuda", 2)
    assert utils.dist.resolve_device("cuda:1", 0, 1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="under torchrun would put all 2 processes on one GPU"):
        utils.dist.resolve_device("cuda:1", 0, 2)
    with pytest.raises(ConfigError, match="needs GPU 5 but only 4"):
        utils.dist.resolve_device("cuda:5", 0, 1)
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        utils.dist.resolve_device("gpu", 0, 1)


def test_a_single_process_makes_its_gpu_current(monkeypatch):
    import utils.dist

    current = []
    monkeypatch.setattr(utils.dist, "resolve_device", lambda device, local_rank, world: torch.device("cuda", 1))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cuda:1") == torch.device("cuda", 1) and current == [torch.device("cuda", 1)]


def test_rank_zero_result_is_shared_and_its_error_raised():
    from utils.dist import all_gather_uneven, describe_device, main_process_result
    from utils.errors import DataError

    assert main_process_result(lambda: {"train": [1, 2]}) == {"train": [1, 2]}
    with pytest.raises(DataError, match="bad record"):
        main_process_result(lambda: (_ for _ in ()).throw(DataError("bad record")))
    rows = torch.randn(3, 2)
    assert all_gather_uneven(rows) is rows
    assert describe_device(torch.device("cpu")).startswith("device cpu (")


def launch_arguments(tmp_path, script: str, *arguments: str, **env: str):
    """What ``bash SCRIPT`` passes to python, through a stand-in venv whose python prints its arguments."""
    import hashlib
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").write_text('#!/usr/bin/env bash\necho "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".requirements.sha256").write_text(hashlib.sha256((root / "requirements.txt").read_bytes()).hexdigest())
    return subprocess.run(["bash", str(root / script), *arguments], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CADA_VENV": str(venv), **env})


def test_single_machine_launches_pick_free_ports_and_multi_node_needs_its_address(tmp_path):
    for script, arguments in (("train.bash", ["configs/synthetic.yaml", "train.epochs=1"]), ("eval.bash", ["x.pth"])):
        done = launch_arguments(tmp_path, script, *arguments, GPUS="2")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        assert "--master_port" not in done.stdout  # a fixed port would collide with a second job
    done = launch_arguments(tmp_path, "train.bash", GPUS="8", NNODES="2", NODE_RANK="1")
    assert done.returncode != 0 and "NNODES>1 needs MASTER_ADDR" in done.stderr
    done = launch_arguments(tmp_path, "train.bash", GPUS="8", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1")
    assert "--nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 29500" in done.stdout
