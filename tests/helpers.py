"""What several test modules share (tests import from here, never from each other).

- a tiny CADA training batch, a step's losses and gradients, and their comparison;
- the four losses computed the authors' way (full-length passes, one image per fused pair, logits at every
  decoder position), an independent version of ``models.cada.CADA.forward``;
- the authors' release as a model: ``cada_base`` at 224x224 with the deterministic weights of
  ``fixtures/README.md``, loaded through the CADA-checkpoint importer;
- the tests' own small config (``tests/configs/tiny.yaml``) pointed at temporary folders, and a small
  retrieval set of random images;
- two spawned CPU processes joined in one process group (``run_two``).
"""
import contextlib
import json
import socket
import zlib
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from datasets.ara_masking import mask_attribute_tokens, pack_candidate_groups
from datasets.attributes import attribute_candidates, build_tagger
from datasets.person_search import RetrievalSet
from datasets.records import PersonRecord
from datasets.tokenization import build_tokenizer, encode
from engine.builders import build_model
from models.losses.ara import ara_loss
from models.losses.atp import atp_group_features, atp_loss_reference
from models.losses.global_alignment import global_alignment_loss
from models.losses.itm import itm_loss, itm_similarities, select_hard_negatives
from utils.config import load_config
from utils.config_schema import ARALossConfig
from utils.vocab import ENC_ID, IGNORE_INDEX, MAX_TEXT_LEN, VOCAB_SIZE

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SIZE = (32, 16)  # (H, W) of the tiny model's images
CAPTIONS = ("a man in a red coat and blue jeans", "a woman with long black hair, a white shirt and a bag",
            "a boy in green", "a person wearing a grey hoodie, black trousers, white shoes and a cap")


def training_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Four pairs of two identities (labels 0, 0, 1, 1) for ``cada_tiny``: random (4, 3, *SIZE) images, the
    captions padded to 73 tokens, and their ARA-masked copies (``seed`` draws the masking and the images)."""
    tokenizer = build_tokenizer()
    ids, mask = encode(tokenizer, list(CAPTIONS), MAX_TEXT_LEN)  # (4, 73)
    tagger = build_tagger("lexicon")
    groups = pack_candidate_groups([attribute_candidates(c, tokenizer, tagger, max_len=MAX_TEXT_LEN)
                                    for c in CAPTIONS], MAX_TEXT_LEN)
    ara_ids, ara_labels = mask_attribute_tokens(ids, groups, ARALossConfig().prob,
                                                generator=torch.Generator().manual_seed(seed))
    assert (ara_labels != IGNORE_INDEX).any() and mask.sum(1).max() < 30
    images = torch.randn(len(CAPTIONS), 3, *SIZE, generator=torch.Generator().manual_seed(0))
    return {"image": images, "label": torch.arange(len(CAPTIONS)) // 2, "input_ids": ids, "attention_mask": mask,
            "ara_input_ids": ara_ids, "ara_labels": ara_labels}


def losses_and_grads(model, batch, loss_fn=None):
    """``(losses, gradients by parameter name)`` of one backward of the summed losses of ``loss_fn(batch)``
    (default: ``model(batch)``)."""
    model.zero_grad(set_to_none=True)
    losses = (model if loss_fn is None else loss_fn)(batch)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_same(first, second):
    """Two :func:`losses_and_grads` results agree: the same loss names and graded parameters, values within
    float rounding."""
    (losses, grads), (expected_losses, expected_grads) = first, second
    assert losses.keys() == expected_losses.keys()
    for name in losses:
        torch.testing.assert_close(losses[name], expected_losses[name], atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def authors_way_losses(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The four losses of one process, computed as the authors' code does with ``model``'s weights."""
    settings = model.objective
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["label"]
    image_embeds = model.encode_image(batch["image"])
    image_proj = model.project_image(image_embeds)
    text_proj = model.project_text(model.encode_text(ids, mask))
    losses = {"global": global_alignment_loss(F.normalize(image_proj, dim=-1), F.normalize(text_proj, dim=-1),
                                              labels, scale=settings.global_.scale,
                                              weights=(settings.global_.forward_kl, settings.global_.reverse_kl,
                                                       settings.global_.cross_entropy))}
    b = ids.shape[0]
    enc_ids = ids.clone()
    enc_ids[:, 0] = ENC_ID
    with torch.no_grad():
        sim_t2i, sim_i2t = itm_similarities(image_proj, text_proj, image_proj, text_proj, settings.itm.temperature)
        neg_image, neg_text = select_hard_negatives(sim_t2i, sim_i2t, labels, labels, mode=settings.itm.negatives)
    all_ids = torch.cat([enc_ids, enc_ids, enc_ids[neg_text]])  # (3b, 73)
    all_mask = torch.cat([mask, mask, mask[neg_text]])
    fused = model.fuse(all_ids, all_mask, torch.cat([image_embeds, image_embeds[neg_image], image_embeds]))
    logits = model.itm_head(fused[:, 0]).float()
    losses["itm"] = itm_loss(logits[:b], logits[b:])
    groups, _ = atp_group_features(fused, all_mask, mode="reference", groups=settings.atp.groups)
    is_match = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)]).to(groups.device)
    losses["atp"] = atp_loss_reference(model.itm_local_head(groups).float(), is_match)
    vocab_logits = model.decode(batch["ara_input_ids"], mask, image_embeds)  # (b, 73, V)
    losses["ara"] = ara_loss(vocab_logits.float().view(1, -1, VOCAB_SIZE), batch["ara_labels"].view(1, -1))
    return losses


RELEASE_NORM_WEIGHT_SUFFIXES = ("LayerNorm.weight", "norm.weight", "norm1.weight", "norm2.weight")
RELEASE_ALIASES = {"text_decoder.cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
                   "text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias"}


def recipe_state_dict() -> dict[str, torch.Tensor]:
    """Every key of the release manifest, filled by the fixture README's crc32-seeded recipe."""
    manifest = json.loads((FIXTURES / "cada_model_keys.json").read_text())
    state = {}
    for key, shape in manifest.items():
        if key in RELEASE_ALIASES:
            continue
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[-1]).expand(shape).clone()
            continue
        generator = torch.Generator().manual_seed(zlib.crc32(("shared:" + key).encode()))
        value = torch.randn(shape, generator=generator) * 0.02
        state[key] = 1 + value if key.endswith(RELEASE_NORM_WEIGHT_SUFFIXES) else value
    for alias, source in RELEASE_ALIASES.items():
        state[alias] = state[source]
    return {key: state[key] for key in manifest}  # the manifest's order


def release_config():
    """The reference recipe's config (configs/cuhk_pedes.yaml) at the release's size: cada_base, 224x224."""
    return load_config("configs/cuhk_pedes.yaml", ["model.name=cada_base", "model.image_size=[224,224]"])


def build_release_model(folder: Path):
    """``cada_base`` with the recipe weights, written as a ``{'model': state_dict}`` file in ``folder`` and read
    back through ``models.checkpoint_import.load_pretrained`` (the file is deleted afterwards)."""
    path = folder / "cuhk_best.pth"
    torch.save({"model": recipe_state_dict()}, path)
    model = build_model(release_config(), weights=path)
    path.unlink()
    return model


TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


def tiny_config(data_root: Path, output_dir: Path, *overrides: str) -> tuple[str, list[str]]:
    """``(config path, overrides)`` of the tests' small run with its data and outputs in the given folders, for
    ``load_config(*tiny_config(...))``; further ``section.key=value`` overrides follow."""
    return str(TINY_CONFIG), [f"data.root={data_root}", f"train.output_dir={output_dir}", *overrides]


def tiny_arguments(data_root: Path, output_dir: Path, *overrides: str) -> list[str]:
    """The same as command-line arguments of ``train.py``: the config path, then the overrides."""
    path, all_overrides = tiny_config(data_root, output_dir, *overrides)
    return [path, *all_overrides]


def make_set(folder: Path, size: tuple[int, int] = (64, 32)) -> RetrievalSet:
    """A test split of 6 people x 2 random images of ``size`` (written once into ``folder``), 2 captions each."""
    generator = torch.Generator().manual_seed(1)
    records = []
    for person in range(6):
        for shot in range(2):
            pixels = (torch.rand(size[0], size[1], 3, generator=generator) * 255).to(torch.uint8).numpy()
            path = folder / f"{person}_{shot}.png"
            if not path.exists():  # several processes may build the same set
                Image.fromarray(pixels).save(path)
            colour = ["red", "blue", "green", "black", "white", "pink"][person]
            records.append(PersonRecord(path, person, (f"a person in a {colour} coat", f"{colour} shoes {shot}"),
                                        "test"))
    return RetrievalSet.from_records(records)


HOST_READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero",
                        "unique"})


class _NoHostReads(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            raise AssertionError(f"{name}() reads a tensor back to the host (on CUDA: waits for the GPU)")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads():
    """Fails on any tensor operation that, on a GPU tensor, would wait for the GPU and copy to the host."""
    with _NoHostReads():
        yield


class OnDevice(torch.Tensor):
    """A CPU tensor that stands for one on a GPU: operations on it give ``OnDevice`` tensors and every read
    back to the host (:data:`HOST_READS`) is counted in ``OnDevice.reads``."""

    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            cls.reads += 1
            with torch._C.DisableTorchFunctionSubclass():
                result = func(*args, **(kwargs or {}))
            return result.as_subclass(torch.Tensor) if isinstance(result, torch.Tensor) else result
        return super().__torch_function__(func, types, args, kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(target, folder) -> None:
    """Runs ``target(rank, port, folder)`` in two spawned processes (ranks 0 and 1); both must exit with 0."""
    context, port = mp.get_context("spawn"), free_port()
    processes = [context.Process(target=target, args=(rank, port, str(folder))) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0
