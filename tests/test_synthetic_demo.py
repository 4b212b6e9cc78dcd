"""The synthetic demo's levers and ceiling: the attribute oracle (by hand and against a brute-force ranking on a
generated set), fresh renders (deterministic in the sample seed, true to the recorded person), the local-loss
ramp and the re-ranking logit weight."""
import json

import numpy as np
import pytest
import torch

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.person_search import RetrievalSet, TrainPairs
from datasets.synthetic import Identity, generate_dataset, render_person
from datasets.synthetic.fresh import RENDER_STREAM, FreshRenders
from datasets.synthetic.oracle import oracle_metrics, oracle_scores, stated_facts
from datasets.tokenization import build_tokenizer
from datasets.transforms import build_image_transform
from engine.evaluator import evaluate
from engine.builders import leaves_parameters_unused
from models.cada import CADA
from models.registry import get_model_spec
from utils.config import EvalConfig, LossConfig, load_config
from utils.schedule import linear_ramp, local_loss_weight


def person(**changes) -> Identity:
    base = Identity("man", "slim", 0, "black", "short", None, None, "shirt", "red", "plain", "trousers", "blue",
                    "white", "backpack", "black", "left")
    return Identity(**{**vars(base), **changes})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return generate_dataset(root / "synthetic-pedes", 20, seed=5, images_per_id=2, split_fractions=(0.4, 0.2, 0.4))


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


def test_train_pairs_use_the_renderer(dataset):
    records = [r for r in read_cuhk_pedes(dataset) if r.split == "train"]
    transform = build_image_transform((128, 64), train=False)
    pairs = TrainPairs(records, transform, build_tokenizer(), 48, render=FreshRenders(dataset))
    from_file = TrainPairs(records, transform, build_tokenizer(), 48)
    assert torch.equal(pairs[(0, 7)]["image"], pairs[(0, 7)]["image"])
    assert not torch.equal(pairs[(0, 7)]["image"], pairs[(0, 8)]["image"])
    assert not torch.equal(pairs[(0, 7)]["image"], from_file[(0, 7)]["image"])
    assert torch.equal(pairs[(0, 7)]["input_ids"], from_file[(0, 7)]["input_ids"])


def test_linear_ramp_by_hand():
    assert [linear_ramp(s, 4) for s in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert linear_ramp(0, 0) == 1.0


def test_local_loss_weight_by_hand():
    assert [local_loss_weight(s, 3, 4) for s in (0, 2, 3, 4, 5, 7, 20)] == [0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert [local_loss_weight(s, 2, 0) for s in (0, 1, 2, 3)] == [0.0, 0.0, 1.0, 1.0]
    assert local_loss_weight(0, 0, 0) == 1.0


def test_a_delayed_start_asks_ddp_to_find_unused_parameters():
    assert not leaves_parameters_unused(load_config("configs/cuhk_pedes.yaml"))
    assert leaves_parameters_unused(load_config("configs/cuhk_pedes.yaml", ["loss.local_start_step=10"]))


@pytest.mark.parametrize("atp_mode", ["reference", "adaptive"])
def test_without_local_terms_the_other_losses_and_gradients_are_unchanged(atp_mode):
    """``local=False`` skips ITM, ATP and their fused pass; global and ARA (and their gradients) stay the same."""
    from tests.test_trimming import SIZE, training_batch
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


@pytest.mark.slow
@torch.no_grad()
def test_zero_logit_weight_keeps_the_cosine_ranking(dataset):
    torch.manual_seed(0)
    model = CADA(get_model_spec("cada_tiny"), (64, 32)).eval()
    test = RetrievalSet.from_records([r for r in read_cuhk_pedes(dataset) if r.split == "test"])
    transform = build_image_transform((64, 32), train=False)
    results = {w: evaluate(model, test, build_tokenizer(), transform, EvalConfig(k_test=5, rerank_logit_weight=w),
                           torch.device("cpu"), max_text_len=48) for w in (0.0, 1.0, 2.0)}
    zero = results[0.0]
    assert torch.equal(zero["reranked_per_query"]["first_positive_rank"],
                       zero["global_per_query"]["first_positive_rank"])
    # weight 2 on the logits orders like weight 1 on cos/2 + logit: not the cosine order in general
    assert not torch.equal(results[2.0]["reranked_per_query"]["top_indices"],
                           zero["reranked_per_query"]["top_indices"])


def test_results_json_and_table_carry_the_oracle(tmp_path):
    from engine.results import write_results
    from utils.config import load_config

    checkpoint = tmp_path / "best.pth"
    checkpoint.write_bytes(b"weights")
    row = {"R1": 10.0, "R5": 20.0, "R10": 30.0, "mAP": 12.0, "mINP": 8.0}
    oracle = {"R1": 98.0, "R5": 99.0, "R10": 100.0, "mAP": 98.5, "mINP": 98.7}
    results = {"global": row, "chance_r1": 0.83, "num_queries": 960, "num_gallery": 480}
    config = load_config("configs/synthetic.yaml")
    record = json.loads(write_results({**results, "oracle": oracle}, config, checkpoint, tmp_path / "a").read_text())
    assert record["oracle"] == oracle
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| oracle (true attributes) | 98.00 | 99.00 | 100.00 | 98.50 | 98.70 |" in table
    record = json.loads(write_results(results, config, checkpoint, tmp_path / "b").read_text())
    assert "oracle" not in record
