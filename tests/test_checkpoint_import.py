"""Checkpoint import against the real key/shape manifests of BLIP model_base.pth and the CADA release.

Weights are random and, to stay fast, every width is scaled down (768 -> 64, 2304 -> 192,
3072 -> 256, queue length 57600 -> 8) while all 1,272 / 799 keys, depths and the 197-row position
table are kept; a separate test checks the full-size key/shape set on the meta device.
"""
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.cada_backbone import CADABackbone
from models.checkpoint_import import BLIP_KEY_MAP, CheckpointMismatchError, KeyMap, load_pretrained, remap_state_dict
from models.registry import get_model_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BLIP_KEYS = json.loads((FIXTURES / "blip_model_base_keys.json").read_text())
CADA_KEYS = json.loads((FIXTURES / "cada_model_keys.json").read_text())
SCALED_DIMS = {768: 64, 2304: 192, 3072: 256, 57600: 8}
NARROW_BASE = replace(get_model_spec("cada_base"), vision_width=64, vision_heads=2, text_width=64, text_heads=2,
                      text_ffn=256)
BLIP_DROPPED_ROOTS = ("visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m",
                      "temp", "image_queue", "text_queue", "queue_ptr")
DECODER_WORDS = "text_decoder.bert.embeddings.word_embeddings.weight"
DECODER_PROJECTION = "text_decoder.cls.predictions.decoder.weight"


def _random_state_dict(manifest: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Random tensors with the manifest's keys and scaled shapes; tied entries equal, as in the real files."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in manifest.items():
        shape = [SCALED_DIMS.get(dim, dim) for dim in shape]
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[1]).unsqueeze(0)
        elif key == "queue_ptr":
            state[key] = torch.zeros(shape, dtype=torch.long)
        else:
            state[key] = torch.randn(shape, generator=generator)
    state[DECODER_PROJECTION] = state[DECODER_WORDS].clone()
    state["text_decoder.cls.predictions.decoder.bias"] = state["text_decoder.cls.predictions.bias"].clone()
    return state


@pytest.fixture(scope="module")
def blip_file(tmp_path_factory):
    state = _random_state_dict(BLIP_KEYS)
    path = tmp_path_factory.mktemp("ckpt") / "model_base.pth"
    torch.save({"model": state}, path)
    return path, state


@pytest.fixture(scope="module")
def cada_file(tmp_path_factory):
    state = _random_state_dict(CADA_KEYS)
    path = tmp_path_factory.mktemp("ckpt") / "cuhk_best.pth"
    torch.save({"model": state, "optimizer": {}, "config": {"image_size": 224}, "epoch": 3}, path)
    return path, state


def _assert_loaded_equal(model: CADABackbone, source: dict[str, torch.Tensor], skip=()):
    for key, value in model.state_dict().items():
        if key not in skip:
            assert torch.equal(value, source[key]), key


def test_blip_import_drops_momentum_and_queues_and_misses_only_itm_local_head(blip_file, caplog):
    path, source = blip_file
    model = CADABackbone(NARROW_BASE, (224, 224))
    with caplog.at_level(logging.INFO, logger="models.checkpoint_import"):
        report = load_pretrained(model, path)
    assert report.allowed_missing == ["itm_local_head.weight", "itm_local_head.bias"]
    assert "itm_local_head.weight" in caplog.text
    expected_dropped = [key for key in BLIP_KEYS if key.split(".")[0] in BLIP_DROPPED_ROOTS]
    assert report.dropped == expected_dropped and len(expected_dropped) == 1272 - 797
    assert sorted(report.loaded) == sorted(set(model.state_dict()) - set(report.allowed_missing))
    _assert_loaded_equal(model, source, skip=report.allowed_missing)  # pos_embed included: 14x14 kept


def test_blip_import_interpolates_pos_embed_to_a_rectangular_grid(blip_file):
    path, source = blip_file
    model = CADABackbone(NARROW_BASE, (384, 128))
    load_pretrained(model, path)
    pretrained = source["visual_encoder.pos_embed"]  # (1, 197, 64)
    grid = pretrained[0, 1:].T.reshape(1, 64, 14, 14)  # channels first, patches row-major
    resized = F.interpolate(grid, size=(24, 8), mode="bicubic", align_corners=False)  # (1, 64, 24, 8)
    expected = torch.cat([pretrained[0, :1], resized.reshape(64, 24 * 8).T]).unsqueeze(0)
    torch.testing.assert_close(model.visual_encoder.pos_embed.detach(), expected)
    _assert_loaded_equal(model, source, skip=("itm_local_head.weight", "itm_local_head.bias",
                                              "visual_encoder.pos_embed"))


def test_cada_release_import_loads_every_key(cada_file):
    path, source = cada_file
    model = CADABackbone(NARROW_BASE, (224, 224))
    report = load_pretrained(model, path)
    assert report.allowed_missing == [] and report.dropped == []
    assert report.loaded == list(CADA_KEYS)
    _assert_loaded_equal(model, source)
    predictions = model.text_decoder.cls.predictions
    assert predictions.decoder.weight is model.text_decoder.bert.embeddings.word_embeddings.weight
    assert predictions.decoder.bias is predictions.bias
    assert torch.equal(predictions.decoder.weight, source[DECODER_WORDS])


def test_full_size_cada_base_matches_both_manifests():
    with torch.device("meta"):
        model = CADABackbone(get_model_spec("cada_base"), (224, 224))
    model_state = model.state_dict()
    assert {key: list(value.shape) for key, value in model_state.items()} == CADA_KEYS
    blip_meta = {key: torch.empty(shape, device="meta") for key, shape in BLIP_KEYS.items()}
    mapped, dropped = remap_state_dict(blip_meta, model_state, target_grid=(14, 14))
    assert {key: list(value.shape) for key, value in mapped.items()} == {
        key: shape for key, shape in CADA_KEYS.items() if not key.startswith("itm_local_head.")}
    assert len(dropped) == len(BLIP_KEYS) - len(mapped)


def _tiny_model() -> CADABackbone:
    spec = replace(get_model_spec("cada_tiny"), vision_patch=8,
                   vision_width=16, vision_heads=2, vision_depth=1, text_width=16,
                   text_heads=2, text_ffn=32, text_layers=1, decoder_layers=1, vocab_size=40, max_positions=8)
    return CADABackbone(spec, (16, 8))


def _save(tmp_path, state, name="ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


def test_shape_mismatch_is_an_error_naming_the_key(tmp_path):
    state = {key: value.clone() for key, value in _tiny_model().state_dict().items()}
    state["text_proj.weight"] = torch.zeros(256, 17)
    with pytest.raises(CheckpointMismatchError, match=r"text_proj.weight: checkpoint \(256, 17\) vs model \(256, 16\)"):
        load_pretrained(_tiny_model(), _save(tmp_path, state))


def test_unexpected_key_is_an_error_naming_it(tmp_path):
    state = dict(_tiny_model().state_dict(), **{"text_encoder.pooler.dense.weight": torch.zeros(16, 16)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(1\):\n    text_encoder.pooler.dense.weight"):
        load_pretrained(_tiny_model(), _save(tmp_path, state))


def test_missing_key_is_an_error_unless_allow_listed(tmp_path):
    state = dict(_tiny_model().state_dict())
    del state["itm_head.bias"], state["itm_local_head.weight"]
    path = _save(tmp_path, state)
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\):\n    itm_head.bias"):
        load_pretrained(_tiny_model(), path)
    model = _tiny_model()
    initial = model.itm_head.bias.detach().clone()
    report = load_pretrained(model, path, allow_missing=("itm_local_head.", "itm_head.bias"))
    assert report.allowed_missing == ["itm_head.bias", "itm_local_head.weight"]
    assert torch.equal(model.itm_head.bias, initial)


def test_tied_keys_with_different_values_are_an_error(tmp_path):
    state = {key: value.clone() for key, value in _tiny_model().state_dict().items()}
    state[DECODER_PROJECTION] += 1.0
    with pytest.raises(CheckpointMismatchError, match="tied"):
        load_pretrained(_tiny_model(), _save(tmp_path, state))


def test_checkpoint_without_model_entry_is_rejected(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(_tiny_model().state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="under 'model'"):
        load_pretrained(_tiny_model(), path)


def test_key_map_renames_by_prefix_and_drops_by_name():
    key_map = KeyMap(dropped=("temp", "visual_encoder_m"), renamed=(("vit", "visual_encoder"),))
    state = {"vit.norm.weight": torch.ones(2), "visual_encoder_m.norm.weight": torch.ones(2), "temp": torch.ones(()),
             "temperature": torch.ones(()), "vitals.x": torch.ones(1)}
    mapped, dropped = remap_state_dict(state, {}, key_map=key_map)
    assert list(mapped) == ["visual_encoder.norm.weight", "temperature", "vitals.x"]
    assert dropped == ["visual_encoder_m.norm.weight", "temp"]
    assert "idx_queue" in BLIP_KEY_MAP.dropped
