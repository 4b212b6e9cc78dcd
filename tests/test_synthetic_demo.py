"""The synthetic demo's levers and ceiling: the attribute oracle (by hand, against a brute-force ranking on a
generated set, and as a command), fresh renders (deterministic in the sample seed, true to the recorded person,
chosen by the registry) and the local terms left out before ``loss.local_start_step``."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.person_search import RetrievalSet, TrainPairs, read_photo
from datasets.registry import training_image_loader
from datasets.synthetic import Identity, generate_dataset, render_person
from datasets.synthetic.fresh import RENDER_STREAM, FreshRenders
from datasets.synthetic.oracle import oracle_metrics, oracle_scores, stated_facts
from datasets.tokenization import build_tokenizer
from datasets.transforms import build_image_transform
from engine.builders import leaves_parameters_unused
from models.cada import CADA
from models.registry import get_model_spec
from tests.helpers import SIZE, training_batch
from utils.config import LossConfig, SyntheticConfig, load_config


def person(**changes) -> Identity:
    base = Identity("man", "slim", 0, "black", "short", None, None, "shirt", "red", "plain", "trousers", "blue",
                    "white", "backpack", "black", "left")
    return Identity(**{**vars(base), **changes})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return generate_dataset(root / "synthetic-pedes", 8, 4, 8, seed=5, images_per_id=2)


def test_stated_facts_by_hand():
    someone = person(hair_length="long", upper_pattern="striped", bag=None, bag_colour=None, bag_side=None)
    facts = stated_facts(someone, ("hair", "hat", "upper", "bag"),
                         "A man with long black hair wears a striped red shirt. He wears no hat. He carries no bag.")
    assert facts == {"gender": "man", "hair_colour": "black", "hair_length": "long", "hat": None, "upper": "shirt",
                     "upper_colour": "red", "upper_pattern": "striped", "bag": None}
    # hair length left out of the text; a plain shirt states no pattern; a bag's side is never a fact
    facts = stated_facts(person(), ("person", "hair", "upper", "bag"),
                         "A slim man is in a red shirt. He has black hair. He carries a black backpack on his back.")
    assert facts == {"gender": "man", "build": "slim", "hair_colour": "black", "upper": "shirt", "upper_colour": "red",
                     "bag": "backpack", "bag_colour": "black"}


def test_oracle_scores_and_ranking_by_hand():
    gallery = [person(upper_colour="blue"), person(gender="woman"), person(), person(bag_side="right")]
    facts = [{"gender": "man", "upper": "shirt", "upper_colour": "red"},  # 2, 2, 3, 3
             {"gender": "woman", "hat": None}]  # 1, 2, 1, 1
    scores = oracle_scores(facts, gallery)
    assert scores.tolist() == [[2, 2, 3, 3], [1, 2, 1, 1]]


def test_oracle_on_a_generated_set_equals_a_brute_force_ranking(dataset):
    records = [r for r in read_cuhk_pedes(dataset) if r.split == "test"]
    test = RetrievalSet.from_records(records)
    metrics = oracle_metrics(dataset, test)
    # brute force: the caption is truthful, so its own image has every fact; R1 is a hit when the first
    # gallery image (lowest index) with the top score shows the query's person
    raw = {r["file_path"]: r for r in json.loads((dataset / "reid_raw.json").read_text())}
    paths = ["/".join(p.parts[-2:]) for p in test.gallery_paths]
    gallery = [Identity(**raw[p]["attributes"]) for p in paths]
    hits = []
    for q, owner in enumerate(test.query_gallery_index.tolist()):
        record = raw[paths[owner]]
        caption_index = q - test.query_gallery_index.tolist().index(owner)  # queries follow caption order
        facts = stated_facts(gallery[owner], record["mentions"][caption_index], record["captions"][caption_index])
        satisfied = [sum(getattr(g, k) == v for k, v in facts.items()) for g in gallery]
        assert satisfied[owner] == len(facts), (record["captions"][caption_index], facts)
        best = satisfied.index(max(satisfied))
        hits.append(int(test.gallery_pids[best]) == int(test.query_pids[q]))
    assert metrics["R1"] == pytest.approx(100 * sum(hits) / len(hits))
    assert 0 < metrics["R1"] <= 100


def test_fresh_renders_depend_only_on_the_sample_seed_and_show_the_recorded_person(dataset):
    renders = FreshRenders(dataset)
    path = next(r.image_path for r in read_cuhk_pedes(dataset) if r.split == "train")
    first, again = np.asarray(renders(path, 123)), np.asarray(FreshRenders(dataset)(path, 123))
    assert (first == again).all()
    assert not (first == np.asarray(renders(path, 124))).all()
    recorded = renders.people["/".join(path.parts[-2:])]
    expected = render_person(recorded, np.random.default_rng([123, RENDER_STREAM]), (128, 64))
    assert (first == np.asarray(expected)).all()
    assert first.shape == (128, 64, 3)


def test_the_registry_gives_training_photos_fresh_renders_only_when_asked(dataset):
    records = [r for r in read_cuhk_pedes(dataset) if r.split == "train"]
    transform = build_image_transform((128, 64), train=False)
    settings = SyntheticConfig(train_ids=8, val_ids=4, test_ids=8, seed=5, images_per_id=2)
    loader = training_image_loader("synthetic", dataset.parent, settings)
    assert isinstance(loader, FreshRenders)
    assert training_image_loader("synthetic", dataset.parent, replace(settings, fresh_renders=False)) is read_photo
    assert training_image_loader("cuhk_pedes", dataset.parent, settings) is read_photo
    pairs = TrainPairs(records, transform, build_tokenizer(), 48, load_image=loader)
    from_file = TrainPairs(records, transform, build_tokenizer(), 48)
    assert torch.equal(pairs[(0, 7)]["image"], pairs[(0, 7)]["image"])  # the same (epoch, sample): the same photo
    assert not torch.equal(pairs[(0, 7)]["image"], pairs[(0, 8)]["image"])  # another epoch: another photo
    assert not torch.equal(pairs[(0, 7)]["image"], from_file[(0, 7)]["image"])
    assert torch.equal(from_file[(0, 7)]["image"], from_file[(0, 8)]["image"])
    assert torch.equal(pairs[(0, 7)]["input_ids"], from_file[(0, 7)]["input_ids"])


def test_a_delayed_start_asks_ddp_to_find_unused_parameters():
    config = load_config("configs/cuhk_pedes.yaml")
    assert not leaves_parameters_unused(config, local_terms_computed=True)
    assert leaves_parameters_unused(config, local_terms_computed=False)


@pytest.mark.parametrize("atp_mode", ["reference", "adaptive"])
def test_without_local_terms_the_other_losses_and_gradients_are_unchanged(atp_mode):
    """``local=False`` skips ITM, ATP and their fused pass; global and ARA (and their gradients) stay the same."""
    torch.manual_seed(0)
    objective = LossConfig()
    objective.atp.mode = atp_mode
    model = CADA(get_model_spec("cada_tiny"), SIZE, objective)
    batch = training_batch()

    def losses_and_grads(local):
        model.zero_grad(set_to_none=True)
        losses = model(batch, local=local)
        (losses["global"] + losses["ara"]).backward()
        return losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    skipped, skipped_grads = losses_and_grads(False)
    full, full_grads = losses_and_grads(True)
    assert set(skipped) == {"global", "ara"} and set(full) == {"global", "itm", "atp", "ara"}
    for name in ("global", "ara"):
        torch.testing.assert_close(skipped[name], full[name])
    # the heads and cross-attention that only the fused pass uses get no gradient at all when skipped
    assert not any(n.startswith(("itm_head", "itm_local_head", "adaptive_atp")) for n in skipped_grads)
    assert not any("text_encoder." in n and "crossattention" in n for n in skipped_grads)
    for name, grad in skipped_grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_oracle_command_prints_the_table_of_a_generated_folder(dataset):
    metrics = oracle_metrics(dataset, RetrievalSet.from_records([r for r in read_cuhk_pedes(dataset)
                                                                 if r.split == "val"]))
    completed = subprocess.run([sys.executable, "-m", "datasets.synthetic.oracle", str(dataset), "--split", "val"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "| val split | R1 | R5 | R10 | mAP | mINP |"
    assert lines[2] == "| oracle (true attributes) | " + " | ".join(f"{v:.2f}" for v in metrics.values()) + " |"
    # 4 val people x 2 photos x 2 captions; each query has 2 of the 8 gallery photos as positives
    assert lines[-1] == "chance R1: 25.00% (16 queries, 8 gallery images)"
    missing = subprocess.run([sys.executable, "-m", "datasets.synthetic.oracle", str(dataset.parent / "absent")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: dataset folder not found")
    assert "Traceback" not in missing.stderr
