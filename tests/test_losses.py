"""CADA losses against hand-computed values and independent plain-Python implementations."""
import math

import pytest
import torch

from datasets.ara_masking import mask_attribute_tokens, pack_candidate_groups
from models.losses.ara import ara_loss
from models.losses.atp import AdaptiveATP, atp_group_features, atp_loss_reference
from models.losses.global_alignment import global_alignment_loss
from models.losses.itm import itm_loss, itm_similarities, select_hard_negatives
from tests.helpers import no_host_reads


def cross_entropy(logits, label):
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


# ---------------------------------------------------------------- global alignment

def test_global_alignment_two_pairs_closed_form():
    # v̂ = t̂ = I, distinct ids, s = 1: S = I, P_ii = σ = e/(e+1), q = I.
    eps = 1e-8
    sigma = math.e / (math.e + 1)
    forward = (2 * sigma * (math.log(sigma) - math.log(1 + eps))
               + 2 * (1 - sigma) * (math.log(1 - sigma) - math.log(eps))) / 4
    reverse = 2 * (math.log(1 + eps) - math.log(sigma)) / 4
    ce = -math.log(sigma)
    expected = forward + reverse + ce  # both directions are equal here
    loss = global_alignment_loss(torch.eye(2), torch.eye(2), torch.tensor([3, 7]), scale=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def plain_global_loss(image, text, ids, scale, eps, weights):
    n = len(ids)
    sims = [[scale * sum(a * b for a, b in zip(image[i], text[j])) for j in range(n)] for i in range(n)]
    q = [[(ids[i] == ids[j]) / sum(ids[i] == ids[k] for k in range(n)) for j in range(n)] for i in range(n)]

    def ell(rows):
        total_forward = total_reverse = total_ce = 0.0
        for i, row in enumerate(rows):
            norm = sum(math.exp(x) for x in row)
            for j, x in enumerate(row):
                p = math.exp(x) / norm
                total_forward += p * (math.log(p) - math.log(q[i][j] + eps))
                total_reverse += q[i][j] * (math.log(q[i][j] + eps) - math.log(p))
                total_ce -= q[i][j] * math.log(p)
        return weights[0] * total_forward / n**2 + weights[1] * total_reverse / n**2 + weights[2] * total_ce / n

    columns = [[sims[j][i] for j in range(n)] for i in range(n)]
    return (ell(sims) + ell(columns)) / 2


def test_global_alignment_three_pairs_shared_identity_against_plain_python():
    image = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    text = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
    ids = [5, 9, 5]
    weights = (0.5, 2.0, 1.5)
    expected = plain_global_loss(image, text, ids, scale=3.0, eps=1e-8, weights=weights)
    loss = global_alignment_loss(torch.tensor(image), torch.tensor(text), torch.tensor(ids), scale=3.0,
                                 weights=weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_global_alignment_casts_half_inputs_to_fp32_and_backpropagates():
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).bfloat16().requires_grad_()
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    loss = global_alignment_loss(image, text, torch.tensor([0, 0, 1, 2]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(image.grad.float()).all() and image.grad.abs().sum() > 0


# ---------------------------------------------------------------- ITM

def test_argmax_picks_hardest_other_identity():
    sims = torch.tensor([[9.0, 5.0, 7.0, 1.0],   # anchor id 0: entry 0 is its own identity → 2
                         [3.0, 9.0, 2.0, 8.0]])  # anchor id 1: entries 1 and 3 are id 1 → 0
    anchor_ids, global_ids = torch.tensor([0, 1]), torch.tensor([0, 1, 2, 1])
    neg_image, neg_text = select_hard_negatives(sims, sims.flip(1), anchor_ids, global_ids)
    assert neg_image.tolist() == [2, 0]
    assert neg_text.tolist() == [3, 2]  # flipped rows: [1,7,5,9] → 3 ; [8,2,9,3] → 2


@pytest.mark.parametrize("mode", ["argmax", "multinomial"])
def test_negative_never_shares_identity_when_softmax_underflows(mode):
    generator = torch.Generator().manual_seed(0)
    global_ids = torch.tensor([0, 0, 0, 1, 2, 0])
    anchor_ids = global_ids[:3]
    # Same-identity entries are 1e4 higher: softmax of the unmasked row underflows everywhere else.
    sims = torch.zeros(3, 6).masked_fill(anchor_ids[:, None] == global_ids[None, :], 1e4)
    for _ in range(50):
        neg_image, neg_text = select_hard_negatives(sims, sims, anchor_ids, global_ids, mode, generator)
        assert (global_ids[neg_image] != anchor_ids).all()
        assert (global_ids[neg_text] != anchor_ids).all()


def test_multinomial_follows_softmax_of_allowed_entries():
    generator = torch.Generator().manual_seed(1)
    sims = torch.tensor([[50.0, 0.0, math.log(3.0)]]).expand(4000, -1)
    anchor_ids, global_ids = torch.zeros(4000, dtype=torch.long), torch.tensor([0, 1, 2])
    neg_image, _ = select_hard_negatives(sims, sims, anchor_ids, global_ids, "multinomial", generator)
    assert set(neg_image.tolist()) == {1, 2}
    assert (neg_image == 2).float().mean().item() == pytest.approx(0.75, abs=0.03)


def test_no_negative_is_an_error():
    sims = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="no hard negative"):
        select_hard_negatives(sims, sims, torch.tensor([4, 4]), torch.tensor([4, 4, 4]))


@pytest.mark.parametrize("mode", ["argmax", "multinomial"])
def test_hard_negatives_are_chosen_without_reading_the_device(mode):
    sims = torch.randn(4, 8)
    with no_host_reads():
        select_hard_negatives(sims, sims, torch.arange(4), torch.arange(8) % 4, mode)


def test_itm_similarities_by_hand():
    image = torch.tensor([[1.0, 2.0]])
    text = torch.tensor([[3.0, 0.0]])
    global_image = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    global_text = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    sim_t2i, sim_i2t = itm_similarities(image, text, global_image, global_text, temp=0.5)
    assert sim_t2i.tolist() == [[6.0, 0.0]]
    assert sim_i2t.tolist() == [[6.0, 6.0]]


def test_itm_loss_by_hand():
    pos = torch.tensor([[0.0, 1.0]])
    neg = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = (math.log(1 + math.exp(-1)) * 2 + math.log(2)) / 3
    assert itm_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- ATP

def tiny_fused():
    fused = torch.arange(14, dtype=torch.float32).reshape(1, 7, 2)  # position l holds [2l, 2l+1]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])  # positions 5, 6 are padding
    return fused, mask


def test_reference_groups_pool_fixed_windows_including_padding():
    fused, mask = tiny_fused()
    feats, valid = atp_group_features(fused, mask, mode="reference", groups=2)
    # positions 1–3 → mean of [2,3],[4,5],[6,7]; positions 4–6 → mean of [8,9],[10,11],[12,13]
    assert feats.tolist() == [[[4.0, 5.0], [10.0, 11.0]]]
    assert valid.tolist() == [[True, True]]
    feats, _ = atp_group_features(fused, mask, mode="reference", groups=2, mask_padding=True)
    assert feats.tolist() == [[[4.0, 5.0], [8.0, 9.0]]]  # second window keeps only position 4


def test_adaptive_groups_split_each_samples_real_tokens():
    fused, mask = tiny_fused()
    mask = torch.cat([mask, torch.tensor([[1, 1, 0, 0, 0, 0, 0]])])
    fused = fused.expand(2, -1, -1)
    feats, valid = atp_group_features(fused, mask, mode="adaptive", groups=2)
    # sample 0: real positions 1..4 → {1, 2} and {3, 4}; sample 1: only position 1 → one valid group
    assert feats.tolist() == [[[3.0, 4.0], [7.0, 8.0]], [[2.0, 3.0], [0.0, 0.0]]]
    assert valid.tolist() == [[True, True], [True, False]]


def test_reference_atp_loss_by_hand():
    logits = torch.tensor([[[0.0, 2.0], [1.0, 0.0]], [[0.5, 0.5], [3.0, -1.0]], [[0.0, 0.0], [2.0, 1.0]]])
    labels = torch.tensor([1, 0, 0])
    expected = sum(cross_entropy(logits[n, g].tolist(), int(labels[n])) for n in range(3) for g in range(2)) / 6
    assert atp_loss_reference(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    valid = torch.tensor([[True, False], [True, True], [True, True]])
    expected_valid = (expected * 6 - cross_entropy([1.0, 0.0], 1)) / 5
    assert atp_loss_reference(logits, labels, valid).item() == pytest.approx(expected_valid, rel=1e-6)


def test_adaptive_atp_weights_loss_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(2, 2)
    module = AdaptiveATP(hidden_size=2)
    feats = torch.tensor([[[1.0, -1.0], [0.5, 2.0]], [[0.3, 0.7], [0.0, 0.0]]], requires_grad=True)
    valid = torch.tensor([[True, True], [True, False]])
    labels = torch.tensor([1, 0])

    loss, weights = module(feats, valid, labels, head)
    assert weights.tolist() == [[0.5, 0.5], [1.0, 0.0]]  # zero-initialised confidence → uniform

    with torch.no_grad():
        module.confidence.weight.copy_(torch.tensor([[0.8, -0.3]]))
        module.confidence.bias.fill_(0.2)
    loss, weights = module(feats, valid, labels, head)
    assert weights[1, 0].item() == 1.0 and weights[1, 1].item() == 0.0  # exact, not approximately

    scores = [0.8 * 1.0 - 0.3 * -1.0 + 0.2, 0.8 * 0.5 - 0.3 * 2.0 + 0.2]
    w0 = math.exp(scores[0]) / (math.exp(scores[0]) + math.exp(scores[1]))
    assert weights[0, 0].item() == pytest.approx(w0, rel=1e-6)
    group_logits = head(feats).detach()
    z0 = (w0 * group_logits[0, 0] + (1 - w0) * group_logits[0, 1]).tolist()
    z1 = group_logits[1, 0].tolist()
    expected = (cross_entropy(z0, 1) + cross_entropy(z1, 0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    loss.backward()
    assert feats.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0
    assert module.confidence.weight.grad.abs().sum() > 0
    assert feats.grad[1, 1].abs().sum() == 0  # the invalid group receives nothing


def test_adaptive_atp_rejects_sample_without_valid_group():
    with pytest.raises(ValueError, match="no valid group"):
        AdaptiveATP(2)(torch.zeros(1, 2, 2), torch.tensor([[False, False]]), torch.tensor([1]),
                       torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- ARA

def test_pack_candidate_groups_and_errors():
    packed = pack_candidate_groups([[[2, 3], [5]], [], [[1], [], [4]]], seq_len=6)
    assert packed.tolist() == [[-1, -1, 0, 0, -1, 1], [-1] * 6, [-1, 0, -1, -1, 1, -1]]
    with pytest.raises(ValueError, match="outside"):
        pack_candidate_groups([[[6]]], seq_len=6)
    with pytest.raises(ValueError, match="in groups 0 and 1"):
        pack_candidate_groups([[[2], [2]]], seq_len=6)


# [CLS] a red hat and blue bag [SEP] [PAD]; a buggy list names [CLS], [SEP] and [PAD] too.
IDS = torch.tensor([[101, 1037, 2417, 6045, 1998, 2630, 4524, 102, 0]])
GROUPS = pack_candidate_groups([[[0], [2, 3], [5], [6], [7, 8]]], seq_len=9)


def test_prob_one_masks_exactly_the_candidates_but_never_special_tokens():
    masked_ids, labels = mask_attribute_tokens(IDS, GROUPS, prob=1.0)
    assert masked_ids.tolist() == [[101, 1037, 103, 103, 1998, 103, 103, 102, 0]]
    assert labels.tolist() == [[-100, -100, 2417, 6045, -100, 2630, 4524, -100, -100]]


def test_groups_are_masked_whole_and_independently():
    generator = torch.Generator().manual_seed(0)
    ids, groups = IDS.expand(2000, -1), GROUPS.expand(2000, -1)
    masked_ids, _ = mask_attribute_tokens(ids, groups, prob=0.4, generator=generator)
    is_masked = masked_ids == 103
    assert (is_masked[:, 2] == is_masked[:, 3]).all()  # "red hat" is one group
    rates = is_masked[:, [2, 5, 6]].float().mean(dim=0)
    assert torch.allclose(rates, torch.full((3,), 0.4), atol=0.04)
    both = (is_masked[:, 5] & is_masked[:, 6]).float().mean().item()
    assert both == pytest.approx(0.16, abs=0.03)  # independent draws per group
    again, _ = mask_attribute_tokens(ids, groups, prob=0.4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked_ids, again)


def test_prob_zero_gives_exact_zero_loss_with_finite_gradients():
    masked_ids, labels = mask_attribute_tokens(IDS, GROUPS, prob=0.0)
    assert torch.equal(masked_ids, IDS) and (labels == -100).all()
    logits = torch.randn(1, 9, 30524, requires_grad=True)
    loss = ara_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_ara_loss_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 1.0, -1.0]]])
    labels = torch.tensor([[1, -100, 2]])
    expected = (cross_entropy([1.0, 2.0, 0.0], 1) + cross_entropy([3.0, 1.0, -1.0], 2)) / 2
    assert ara_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
