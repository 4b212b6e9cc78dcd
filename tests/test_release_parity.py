"""Regression test against the authors' code: ``fixtures/cada_release_outputs.pt`` holds what the CADA
release (LinDixuan/CADA at 1087f33, CPU, fp32, eval mode) computes for deterministic weights and fixed
inputs (see ``fixtures/README.md``). We build ``cada_base`` at 224x224 from the reference config, fill the
same weights into a ``{'model': state_dict}`` file, load it through the CADA-checkpoint importer and
compare every stored tensor within 1e-4; the Grad-CAM path (explicit attention probabilities) must compute
the same logits on these imported weights.
"""
import pytest
import torch
import torch.nn.functional as F

from engine.gradcam import decoder_gradcam, default_layer, itm_gradcam, to_grid
from models.losses.atp import atp_group_features
from tests.helpers import FIXTURES, build_release_model
from utils.vocab import ENC_ID

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def release():
    return torch.load(FIXTURES / "cada_release_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_release_model(tmp_path_factory.mktemp("release")).eval()


@pytest.fixture(scope="module")
def outputs(model, release):
    """Everything the fixture stores, computed by this project's model."""
    images, ids, mask = release["images"], release["input_ids"], release["attention_mask"]
    n = ids.shape[0]
    with torch.no_grad():
        image_embeds = model.encode_image(images)  # (4, 197, 768)
        text_embeds = model.encode_text(ids, mask)  # (4, 73, 768)
        image_feat, text_feat = model.project_image(image_embeds), model.project_text(text_embeds)
        # every text (rows) with every image (columns), [ENC] first
        enc_ids = ids.clone()
        enc_ids[:, 0] = ENC_ID
        pair_ids, pair_mask = enc_ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # (16, 73)
        fused = model.fuse(pair_ids, pair_mask, image_embeds.repeat(n, 1, 1))  # (16, 73, 768)
        groups, _ = atp_group_features(fused, pair_mask, mode="reference", groups=2)  # (16, 2, 768)
        hidden = model.decoder_hidden(release["ara_mask_ids"], mask, image_embeds)  # (4, 73, 768)
        ara_logits = model.decoder_logits(hidden[release["ara_labels"] != -100])  # (8, V)
        losses = model({"image": images, "input_ids": ids, "attention_mask": mask, "label": release["pids"],
                        "ara_input_ids": release["ara_mask_ids"], "ara_labels": release["ara_labels"]})
    return {
        "image_cls": image_embeds[:, 0], "image_feat": image_feat,
        "text_cls": text_embeds[:, 0], "text_feat": text_feat,
        "cosine": F.normalize(text_feat, dim=-1) @ F.normalize(image_feat, dim=-1).T,
        "itm_logits": model.itm_logits(fused).reshape(n, n, 2),
        "atp_group_logits": model.itm_local_head(groups).reshape(n, n, 2, 2),
        "ara_logits_at_masks": ara_logits,
        "loss_global": losses["global"], "loss_itm_plus_atp": losses["itm"] + losses["atp"], "loss_ara": losses["ara"],
    }


@pytest.mark.slow  # builds cada_base (224M parameters) on the CPU: about a minute
@pytest.mark.parametrize("name", ["image_cls", "image_feat", "text_cls", "text_feat", "cosine", "itm_logits",
                                  "atp_group_logits", "ara_logits_at_masks", "loss_global", "loss_itm_plus_atp",
                                  "loss_ara"])
def test_output_equals_release(outputs, release, name):
    ours, theirs = outputs[name], release[name]
    assert ours.shape == theirs.shape, f"{name}: {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    difference = (ours - theirs).abs().max().item()
    assert difference <= TOLERANCE, f"{name}: max |ours - release| = {difference:.3g}"


def test_ara_loss_is_the_mean_cross_entropy_of_the_stored_logits(release):
    """The fixture is self-consistent: its ARA loss is the mean CE of its logits at the masked words."""
    labels = release["ara_labels"][release["ara_labels"] != -100]  # (8,)
    expected = F.cross_entropy(release["ara_logits_at_masks"], labels)
    assert torch.allclose(expected, release["loss_ara"], atol=1e-5)


@pytest.mark.slow
def test_gradcam_on_the_imported_release_gives_its_logits(model, release):
    """Explaining cada_base with the authors' weights: the match logits and the masked-word log-probabilities
    that Grad-CAM differentiates are the release's, and the maps cover the 14x14 patch grid."""
    images, ids, mask = release["images"], release["input_ids"], release["attention_mask"]
    with torch.no_grad():
        image_embeds = model.encode_image(images)  # (4, 197, 768)
    enc_ids = ids.clone()
    enc_ids[:, 0] = ENC_ID
    cams, logits = itm_gradcam(model, image_embeds, enc_ids, mask, default_layer(model.spec.text_layers))
    assert (logits - release["itm_logits"].diagonal(dim1=0, dim2=1)[1]).abs().max() <= TOLERANCE
    assert cams.shape == (4, 73, 196) and (cams >= 0).all()
    assert (cams.flatten(1).amax(dim=1) > 0).all()
    assert to_grid(cams, (224, 224), 16).shape == (4, 73, 14, 14)

    masked = release["ara_labels"] != -100  # (4, 73): two masked words per caption, all [MASK]
    first = masked.sum(dim=1).cumsum(0) - masked.sum(dim=1)  # each caption's first row in ara_logits_at_masks
    for caption in range(4):
        positions = masked[caption].nonzero()[:, 0].tolist()
        word_cams, log_probability = decoder_gradcam(
            model, image_embeds[caption:caption + 1], ids[caption:caption + 1], mask[caption:caption + 1],
            [positions], default_layer(model.spec.text_layers))
        rows = release["ara_logits_at_masks"][first[caption]:first[caption] + len(positions)]  # (2, V)
        expected = rows.log_softmax(-1).gather(1, release["ara_labels"][caption, positions][:, None]).sum()
        assert abs(log_probability.item() - expected.item()) <= 1e-3
        assert word_cams.shape == (1, 196) and word_cams.sum() > 0
