"""SUPIR models (engine/supir.py): a tiny SUPIR file in the authors' key layout for
the tiny SDXL-shaped model, loaded through the users' code path."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from engine.errors import EngineError


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    from engine.demo.builder import build_sdxl_folder

    root = tmp_path_factory.mktemp("supir-models")
    folder = build_sdxl_folder(root / "checkpoints" / "tiny-xl")
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return root, unet, vae


def test_sdxl_base_layout_is_the_authors_table():
    """For SDXL base the derived connector list is the authors' hard-coded XL-base one."""
    from engine.supir import connector_slots, encoder_channels

    config = {"block_out_channels": [320, 640, 1280], "layers_per_block": 2,
              "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}
    assert encoder_channels(config) == [320] * 4 + [640] * 3 + [1280] * 3
    slots = connector_slots(config)
    sft = [s for s in slots if s.kind == "sft"]
    assert [s.concat for s in sft] == [320] * 2 + [640] * 3 + [1280] * 4 + [0]
    assert [s.channels for s in sft] == [320] * 4 + [640] * 3 + [1280] * 3
    # ZeroCrossAttn inserted at 6 and then 3 of the ZeroSFT list, as LightGLVUNet does.
    assert [i for i, s in enumerate(slots) if s.kind == "cross"] == [3, 7]
    assert [(s.label, s.channels) for s in slots if s.kind == "cross"] == [(320, 640), (640, 1280)]


@pytest.mark.parametrize(("name", "half"), [("SUPIR-v0Q.ckpt", False), ("SUPIR-v0F_fp16.safetensors", True)])
def test_tiny_supir_file_loads_every_tensor(xl, name, half):
    from engine.demo.supir import build_supir_file
    from engine.supir import build_supir, find_supir, read_supir_file

    root, unet, vae = xl
    folder = "SUPIR" if half else "upscale_models"
    build_supir_file(root / folder / name, unet, vae, half=half)
    path = find_supir(root, name.split(".")[0])
    assert path.name == name
    state = read_supir_file(path)
    model, used = build_supir(path.stem, state, unet, vae)
    assert used == set(state)  # every tensor of the file is placed, and (strict load) none is missing
    assert any(k.startswith("model.control_model.input_blocks.") for k in state)
    assert any(k.startswith("first_stage_model.denoise_encoder.mid.attn_1.") for k in state)
    # The values arrive 1:1 (the adaptor's first conv, a connector, the encoder's attention as a 1x1 conv).
    sd = model.adaptor.unet.state_dict()
    assert torch.equal(sd["conv_in.weight"], state["model.control_model.input_blocks.0.0.weight"].float())
    assert torch.equal(model.connectors.project_modules[0].zero_mul.weight,
                       state["model.diffusion_model.project_modules.0.zero_mul.weight"].float())
    q = state["first_stage_model.denoise_encoder.mid.attn_1.q.weight"].float()
    assert torch.equal(model.denoise_encoder.mid_block.attentions[0].to_q.weight, q[:, :, 0, 0])


def test_missing_or_extra_tensors_are_refused(xl, tmp_path):
    from engine.demo.supir import supir_state_dict
    from engine.supir import build_supir

    _, unet, vae = xl
    state = supir_state_dict(unet, vae)
    extra = {**state, "model.diffusion_model.project_modules.99.zero_conv.weight": torch.zeros(1)}
    with pytest.raises(EngineError, match="1 unused"):
        build_supir("x", extra, unet, vae)
    fewer = dict(state)
    fewer.pop("model.control_model.input_hint_block.0.weight")
    with pytest.raises(EngineError, match="1 tensors missing"):
        build_supir("x", fewer, unet, vae)


class _Payload:
    def __reduce__(self):
        return (print, ("never run",))


def test_a_renamed_or_code_carrying_pickle_is_refused(xl, tmp_path):
    from engine.supir import find_supir, read_supir_file

    root = tmp_path
    (root / "SUPIR").mkdir()
    (root / "SUPIR" / "SUPIR-v0Q.safetensors").write_bytes(pickle.dumps({"state_dict": {}}))  # a renamed pickle
    with pytest.raises(EngineError) as info:
        read_supir_file(find_supir(root, "SUPIR-v0Q"))
    assert info.value.code == "invalid_model"
    torch.save({"state_dict": {"x": _Payload()}}, root / "SUPIR" / "SUPIR-evil.ckpt")
    with pytest.raises(EngineError) as info:
        read_supir_file(find_supir(root, "SUPIR-evil"))
    assert info.value.code == "unsafe_file"
    with pytest.raises(EngineError) as info:
        find_supir(root, "../checkpoints/tiny-xl")
    assert info.value.code == "unknown_model"


def test_modulated_unet_at_control_scale_0_is_the_sdxl_unet(xl):
    """The decoder pass written here equals diffusers' UNet when the connectors are
    blended out (control scale 0), and differs when they act."""
    from diffusers import UNet2DConditionModel

    from engine.demo.supir import supir_state_dict
    from engine.supir import build_supir, unet_forward

    root, unet_config, vae = xl
    unet = UNet2DConditionModel.from_pretrained(str(root / "checkpoints" / "tiny-xl" / "unet")).eval()
    model, _ = build_supir("x", supir_state_dict(unet_config, vae), unet_config, vae)
    g = torch.Generator().manual_seed(0)
    x, lq = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 2)}
    t = torch.tensor(500.0)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        control = model.adaptor(lq, x, t, context, added)
        assert len(control) == len(model.connectors.sft)
        off = unet_forward(unet, model.connectors, control, x, t, context, added, scale=0.0)
        on = unet_forward(unet, model.connectors, control, x, t, context, added, scale=1.0)
    assert torch.allclose(off, plain, atol=1e-5)
    assert (on - plain).abs().mean() > 1e-3
