"""The models folder: layouts, family detection from keys, safe names."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.errors import EngineError
from engine.families import CONFIG_ROOT, detect
from engine.registry import CHECKPOINT, LORA, UPSCALER, VAE, Registry, check_name

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


def write_st(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, np.float16) for k, s in shapes.items()}, str(path))
    return path


SD15 = {UNET_IN: (320, 4, 3, 3), "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (4, 2)}
SD15_INPAINT = {**SD15, UNET_IN: (320, 9, 3, 3)}
SD2 = {UNET_IN: (320, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (4, 2)}
SDXL = {
    UNET_IN: (320, 4, 3, 3),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (4, 2),
    "conditioner.embedders.1.model.token_embedding.weight": (4, 2),
}
SDXL_REFINER = {UNET_IN: (384, 4, 3, 3), "conditioner.embedders.0.model.token_embedding.weight": (4, 2)}
SDXL_REFINER["conditioner.embedders.1.model.x"] = (1,)
LORA_KEYS = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)}
VAE_KEYS = {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_out.weight": (3, 8, 3, 3)}
ESRGAN_KEYS = {"conv_first.weight": (8, 3, 3, 3), "body.0.rdb1.conv1.weight": (8, 8, 3, 3)}


def ldm_unet_keys(family: str) -> dict[str, list[int]]:
    """The real key set of a family's UNet, from its bundled config (meta device)."""
    import torch
    from diffusers import UNet2DConditionModel

    from engine.demo.ldm_layout import unet_to_ldm

    config = json.loads((CONFIG_ROOT / family / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return {k: list(v.shape) for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}


@pytest.mark.parametrize(
    ("shapes", "family", "inpainting"),
    [(SD15, "sd15", False), (SD15_INPAINT, "sd15", True), (SD2, "sd2", False), (SDXL, "sdxl", False)],
)
def test_detect_family_from_keys(shapes, family, inpainting):
    found = detect({k: list(v) for k, v in shapes.items()})
    assert found is not None and found.family.name == family and found.inpainting == inpainting


def test_detect_rejects_non_sd_and_refiner():
    assert detect({k: list(v) for k, v in LORA_KEYS.items()}) is None
    assert detect({k: list(v) for k, v in SDXL_REFINER.items()}) is None


def test_detect_full_sd15_key_set():
    keys = ldm_unet_keys("sd15")
    assert keys[UNET_IN] == [320, 4, 3, 3]
    keys["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = [768]
    assert detect(keys).family.name == "sd15"


def test_bundled_configs_have_the_real_parameter_counts():
    import torch
    from diffusers import UNet2DConditionModel

    counts = {}
    for family in ("sd15", "sd2", "sdxl"):
        config = json.loads((CONFIG_ROOT / family / "unet" / "config.json").read_text())
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        counts[family] = sum(p.numel() for p in unet.parameters())
    # Published UNet sizes: SD1.5 859.52M, SD2.x 865.91M, SDXL 2567.46M.
    assert counts == {"sd15": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}


def test_webui_layout(tmp_path):
    write_st(tmp_path / "Stable-diffusion" / "sd15" / "dreamshaper.safetensors", SD15)
    write_st(tmp_path / "Stable-diffusion" / "xl.safetensors", SDXL)
    write_st(tmp_path / "Lora" / "style.safetensors", LORA_KEYS)
    write_st(tmp_path / "VAE" / "vae-ft-mse.safetensors", VAE_KEYS)
    write_st(tmp_path / "ESRGAN" / "RealESRGAN_x4plus.safetensors", ESRGAN_KEYS)
    (tmp_path / "ESRGAN" / "4x_old.pth").write_bytes(b"not read at scan time")
    reg = Registry(tmp_path).scan()
    assert [e.name for e in reg.list(CHECKPOINT)] == ["sd15/dreamshaper", "xl"]
    assert reg.get("xl").family.name == "sdxl" and reg.get("xl").native_size == 1024
    assert reg.get("sd15/dreamshaper.safetensors").name == "sd15/dreamshaper"
    assert [e.name for e in reg.list(LORA)] == ["style"]
    assert [e.name for e in reg.list(VAE)] == ["vae-ft-mse"]
    assert [e.name for e in reg.list(UPSCALER)] == ["4x_old", "RealESRGAN_x4plus"]


def test_comfyui_layout(tmp_path):
    write_st(tmp_path / "checkpoints" / "v2.safetensors", SD2)
    write_st(tmp_path / "loras" / "x.safetensors", LORA_KEYS)
    write_st(tmp_path / "upscale_models" / "up.safetensors", ESRGAN_KEYS)
    write_st(tmp_path / "vae" / "v.safetensors", VAE_KEYS)
    reg = Registry(tmp_path).scan()
    assert reg.get("v2").family.name == "sd2" and reg.get("v2").native_size == 768
    assert len(reg.list(LORA)) == len(reg.list(UPSCALER)) == len(reg.list(VAE)) == 1


def test_flat_layout_classifies_by_header(tmp_path):
    write_st(tmp_path / "a.safetensors", SD15)
    write_st(tmp_path / "b-inpainting.safetensors", SD15_INPAINT)
    write_st(tmp_path / "c.safetensors", LORA_KEYS)
    write_st(tmp_path / "d.safetensors", ESRGAN_KEYS)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    reg = Registry(tmp_path).scan()
    assert {e.name for e in reg.list(CHECKPOINT)} == {"a", "b-inpainting"}
    assert reg.default_checkpoint().name == "a"  # not the inpainting model
    assert reg.get("b-inpainting").inpainting
    assert [e.name for e in reg.list(LORA)] == ["c"]
    assert [e.name for e in reg.list(UPSCALER)] == ["d"]


def test_diffusers_folder(tmp_path):
    folder = tmp_path / "checkpoints" / "my-model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768, "in_channels": 4}))
    entry = Registry(tmp_path).scan().get("my-model")
    assert entry.format == "diffusers" and entry.family.name == "sd15"


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "a/../../b", "..\\x", "C:\\models\\x", "c:x", "a\x00b", "./a"])
def test_names_that_leave_the_folder_are_refused(tmp_path, name):
    write_st(tmp_path / "a.safetensors", SD15)
    reg = Registry(tmp_path).scan()
    with pytest.raises(EngineError) as caught:
        reg.get(name)
    assert caught.value.code == "invalid_request"
    with pytest.raises(EngineError):
        check_name(name)


def test_symlink_out_of_the_folder_is_not_served(tmp_path):
    outside = write_st(tmp_path / "outside" / "secret.safetensors", SD15)
    models = tmp_path / "models"
    write_st(models / "ok.safetensors", SD15)
    os.symlink(outside, models / "link.safetensors")
    os.symlink(outside.parent, models / "linkdir")
    reg = Registry(models).scan()
    assert [e.name for e in reg.list(CHECKPOINT)] == ["ok"]
    with pytest.raises(EngineError) as caught:
        reg.get("link")
    assert caught.value.code == "unknown_model" and "ok" in caught.value.message


def test_pickle_renamed_to_safetensors_is_never_listed(tmp_path):
    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Stable-diffusion" / "evil.safetensors").write_bytes(pickle.dumps({"a": 1}))
    reg = Registry(tmp_path).scan()
    assert reg.list() == []
