"""Build tiny random-init SD1.5-shaped models, saved the way users have them.

The checkpoint is a single-file `.safetensors` in the original (LDM/WebUI)
key layout, so it loads through exactly the code that loads real models.
Because its shapes are not SD1.5's, it carries a sidecar `<stem>.config/`
folder (diffusers configs + tokenizer) that the loader prefers over the
bundled SD1.5 configs. The pictures are noise: the weights are random.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.paths import cache_dir
from engine.tokenizers import write_tokenizer_files

DEMO_VERSION = 2  # bump when the demo models change, so caches rebuild
DEMO_CHECKPOINT = "paintbridge-demo"
DEMO_UPSCALER = "paintbridge-demo-x4"
DEMO_CONTROLNET = "paintbridge-demo-control"
DEMO_DEPTH = "depth-anything-tiny"

UNET = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [32, 64],
    # Attention only at the lower resolution (as SDXL does): at 512x512 the
    # UNet step is ~4.5x cheaper than with attention on the 64x64 latent.
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 64,
}
VAE = {
    "_class_name": "AutoencoderKL",
    # Four blocks, so it downsamples by 8 like SD's VAE (two would make the
    # latent 4x larger per side and everything ~60x slower).
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# A few merges on top of CLIP's byte alphabet: enough to exercise BPE.
MERGES = [("a", "t</w>"), ("c", "at</w>"), ("o", "g</w>"), ("d", "og</w>"), ("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>")]


def text_encoder_config(vocab_size: int) -> dict:
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        "vocab_size": vocab_size,
        "hidden_act": "quick_gelu",
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }


def write_sidecar(folder: Path, sd15_config: Path, unet: dict | None = None) -> None:
    """diffusers configs + tokenizer for the tiny checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(sd15_config / "model_index.json", folder / "model_index.json")
    (folder / "scheduler").mkdir(exist_ok=True)
    shutil.copy(sd15_config / "scheduler" / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
    write_tokenizer_files(folder / "tokenizer", MERGES)
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text("utf-8")))
    for sub, config in (("unet", unet or UNET), ("vae", VAE), ("text_encoder", text_encoder_config(vocab_size))):
        (folder / sub).mkdir(exist_ok=True)
        (folder / sub / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def build_checkpoint(path: Path, seed: int = 0, inpainting: bool = False) -> Path:
    """Write `path` (.safetensors, LDM layout) and its `<stem>.config/` sidecar;
    an inpainting model's UNet takes 9 channels (latent, mask, masked image)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.demo.ldm_layout import text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
    from engine.families import SD15

    sidecar = path.with_suffix(".config")
    write_sidecar(sidecar, SD15.config_dir, {**UNET, "in_channels": 9} if inpainting else UNET)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(json.loads((sidecar / "unet" / "config.json").read_text()))
    vae = AutoencoderKL.from_config(json.loads((sidecar / "vae" / "config.json").read_text()))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(sidecar / "text_encoder")))
    state = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text_encoder_to_ldm(text.state_dict()),
    }
    state = {k: v.detach().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "paintbridge": "demo, random weights"})
    tmp.replace(path)  # atomic: a half-written file never looks like a model
    return path


def rrdbnet_state_dict(features: int = 16, blocks: int = 1, growth: int = 32, seed: int = 0) -> dict:
    """Random weights in Real-ESRGAN's RRDBNet x4 key layout (as its .pth files).

    spandrel reads the growth channels as 32, as in every released ESRGAN.

    Small random weights plus the skip connections keep the output near a
    nearest-neighbour upscale, so the demo's upscales still look like the input.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)

    def conv(prefix: str, out_ch: int, in_ch: int) -> dict:
        return {
            f"{prefix}.weight": torch.randn(out_ch, in_ch, 3, 3, generator=gen) * 0.02,
            f"{prefix}.bias": torch.zeros(out_ch),
        }

    state = conv("conv_first", features, 3)
    for b in range(blocks):
        for r in range(1, 4):
            for c in range(1, 6):
                out_ch = features if c == 5 else growth
                state |= conv(f"body.{b}.rdb{r}.conv{c}", out_ch, features + (c - 1) * growth)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        state |= conv(name, features, features)
    state |= conv("conv_last", 3, features)
    # Identity-like first/last convs: features 0..2 carry the RGB input through.
    for i in range(3):
        state["conv_first.weight"][i, i, 1, 1] = 1.0
        for name in ("conv_up1", "conv_up2", "conv_hr"):
            state[f"{name}.weight"][i, i, 1, 1] = 1.0
        state["conv_last.weight"][i, i, 1, 1] = 1.0
    return state


def build_upscaler(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(rrdbnet_state_dict(seed=seed), str(tmp), metadata={"paintbridge": "demo, random weights"})
    tmp.replace(path)
    return path


def demo_models_dir() -> Path:
    """The demo models folder (WebUI layout), built once into the user cache."""
    root = cache_dir() / f"demo-models-v{DEMO_VERSION}"
    checkpoint = root / "Stable-diffusion" / f"{DEMO_CHECKPOINT}.safetensors"
    if not checkpoint.is_file():
        build_checkpoint(checkpoint)
    upscaler = root / "ESRGAN" / f"{DEMO_UPSCALER}.safetensors"
    if not upscaler.is_file():
        build_upscaler(upscaler)
    controlnet = root / "ControlNet" / f"{DEMO_CONTROLNET}.safetensors"
    if not controlnet.is_file():
        build_controlnet(controlnet)
    depth = root / "annotators" / DEMO_DEPTH
    if not (depth / "model.safetensors").is_file():
        build_depth_estimator(depth)
    hed = root / "annotators" / "ControlNetHED.pth"
    if not hed.is_file():
        build_hed(hed)
    return root


def build_sdxl_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny random-init SDXL-shaped model (two text encoders, size conditioning)
    as a diffusers folder, the other format users have."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from engine.families import SDXL

    tokenizer_dir = folder.with_suffix(".tokenizer")
    write_tokenizer_files(tokenizer_dir, MERGES)
    vocab_size = len(json.loads((tokenizer_dir / "vocab.json").read_text("utf-8")))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=64,  # 32 + 32 from the two text encoders
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size numbers + the pooled text
        transformer_layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )
    vae = AutoencoderKL.from_config({**VAE, "scaling_factor": 0.13025, "force_upcast": False})
    text = text_encoder_config(vocab_size)
    encoder = CLIPTextModel(CLIPTextConfig(**text))
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**text, "architectures": ["CLIPTextModelWithProjection"]}))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77, local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77, pad_token="!",
                                                local_files_only=True)
    scheduler = EulerDiscreteScheduler.from_config(
        json.loads((SDXL.config_dir / "scheduler" / "scheduler_config.json").read_text())
    )
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(tokenizer_dir)
    return folder


def build_real_architecture_checkpoint(path: Path, family: str, seed: int = 0, answer: float | None = None) -> Path:
    """A random-init checkpoint with a real family's exact architecture and key
    layout (SD1.5, SD2 with its OpenCLIP text encoder, or SDXL with both of its
    encoders), saved in fp16 as a single `.safetensors` with no sidecar: it loads
    through the bundled configs, exactly as a user's real checkpoint does.
    Large (SD1.5 2.1 GB, SD2 2.4 GB, SDXL 7 GB): for slow tests and checks.
    `answer`: the UNet's output layer answers this everywhere (-2 is how a
    v-prediction model answers the probe in engine.models.predicts_v, 0.5 a
    noise predictor)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.demo.ldm_layout import open_clip_to_ldm, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
    from engine.families import FAMILIES

    config = FAMILIES[family].config_dir
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if family == "sdxl" else torch.float32)  # SDXL: half the RAM
    try:
        unet = UNet2DConditionModel.from_config(json.loads((config / "unet" / "config.json").read_text()))
        if answer is not None:
            with torch.no_grad():
                unet.conv_out.weight.zero_()
                unet.conv_out.bias.fill_(answer)
        vae = AutoencoderKL.from_config(json.loads((config / "vae" / "config.json").read_text()))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config / "text_encoder")))
        state = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config)}
        if family == "sd15":
            state |= text_encoder_to_ldm(text.state_dict())
        elif family == "sd2":
            state |= open_clip_to_ldm(text.state_dict(), "cond_stage_model.model.")
        else:
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(config / "text_encoder_2")))
            state |= text_encoder_to_ldm(text.state_dict(), "conditioner.embedders.0.transformer.text_model.")
            state |= open_clip_to_ldm(text_2.state_dict(), "conditioner.embedders.1.model.")
    finally:
        torch.set_default_dtype(previous)
    state = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def build_controlnet(path: Path, seed: int = 0, layout: str = "ldm", unet: dict | None = None) -> Path:
    """A tiny random-init ControlNet for the demo checkpoint's UNet, saved as users
    have them: "ldm" (lllyasviel's `control_model.*` single file, with a
    `<stem>.config/config.json` sidecar since its shapes are not SD1.5's),
    "diffusers" (a single file in diffusers' keys, same sidecar) or "folder"
    (a diffusers folder: config.json + diffusion_pytorch_model.safetensors).
    The zero convolutions get small random weights so the unit changes the picture."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    from engine.demo.ldm_layout import controlnet_to_ldm

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(UNet2DConditionModel.from_config(unet or UNET))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                param.normal_(0.0, 0.05)
    if layout == "folder":
        net.save_pretrained(str(path), safe_serialization=True)
        return path
    config = {k: v for k, v in dict(net.config).items() if not k.startswith("_")}
    sidecar = path.with_suffix(".config")
    sidecar.mkdir(parents=True, exist_ok=True)
    (sidecar / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel", **config}, indent=2) + "\n")
    state = net.state_dict() if layout == "diffusers" else controlnet_to_ldm(net.state_dict(), net.config)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"paintbridge": "demo, random weights"})
    tmp.replace(path)
    return path


def build_depth_estimator(folder: Path, seed: int = 0) -> Path:
    """A tiny random-init Depth Anything (DINOv2 backbone + DPT head) in the
    transformers format of depth-anything/Depth-Anything-V2-Small-hf: config.json,
    model.safetensors, preprocessor_config.json."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=112, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    model = DepthAnythingForDepthEstimation(config).eval()
    tmp = folder.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    DPTImageProcessor(do_resize=True, size={"height": 112, "width": 112}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def build_depth_checkpoint(path: Path, seed: int = 0, midas: bool = True) -> Path:
    """A tiny random-init checkpoint shaped like SD 2's depth model
    (`512-depth-ema`): OpenCLIP-layout text encoder, a UNet taking 5 channels
    (latent + depth), and its MiDaS under `depth_model.model.*` in the original
    layout (a tiny DPT-Hybrid, engine/demo/midas.py; with `midas=False` a
    single token tensor, as a pruned conversion leaves it, so the server falls
    back to the annotators/ estimator). LDM layout, with a `<stem>.config/`
    sidecar since its shapes are not SD 2's (depth_estimator/config.json: the
    tiny DPT's)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.demo.ldm_layout import open_clip_to_ldm, unet_to_ldm, vae_to_ldm
    from engine.families import SD2

    sidecar = path.with_suffix(".config")
    write_sidecar(sidecar, SD2.config_dir, {**UNET, "in_channels": 5})
    scheduler = json.loads((SD2.config_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler["prediction_type"] = "epsilon"  # the depth model predicts noise (v2-midas-inference.yaml)
    (sidecar / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(json.loads((sidecar / "unet" / "config.json").read_text()))
    vae = AutoencoderKL.from_config(json.loads((sidecar / "vae" / "config.json").read_text()))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(sidecar / "text_encoder")))
    state = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **open_clip_to_ldm(text.state_dict(), "cond_stage_model.model."),
    }
    if midas:
        from engine.demo.midas import TINY_CONFIG, tiny_midas_state

        state.update({f"depth_model.model.{k}": v for k, v in tiny_midas_state(seed).items()})
        (sidecar / "depth_estimator").mkdir(exist_ok=True)
        (sidecar / "depth_estimator" / "config.json").write_text(json.dumps(TINY_CONFIG, indent=2) + "\n")
    else:
        state["depth_model.model.pretrained.model.cls_token"] = torch.zeros(1, 1, 8)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "paintbridge": "test, random weights"})
    tmp.replace(path)
    return path


def build_hed(path: Path, seed: int = 0, widths: tuple[int, ...] = (4, 8, 8, 16, 16),
              depths: tuple[int, ...] = (2, 2, 3, 3, 3)) -> Path:
    """A tiny random-init HED with ControlNet 1.1's layout (`norm`,
    `block<i>.convs.<j>`, `block<i>.projection`; engine/softedge.py), saved as
    lllyasviel's ControlNetHED.pth is: a torch.save'd plain state dict."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {"norm": torch.rand(1, 3, 1, 1, generator=generator) * 128}
    channels = 3
    for i, (width, depth) in enumerate(zip(widths, depths, strict=True), 1):
        for j in range(depth):
            fan_in = (channels if j == 0 else width) * 9
            state[f"block{i}.convs.{j}.weight"] = torch.randn(width, fan_in // 9, 3, 3, generator=generator) / fan_in**0.5 / 16
            state[f"block{i}.convs.{j}.bias"] = torch.zeros(width)
        state[f"block{i}.projection.weight"] = torch.randn(1, width, 1, 1, generator=generator) / width**0.5
        state[f"block{i}.projection.bias"] = torch.zeros(1)
        channels = width
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def build_taesd(folder: Path, prefix: str = "taesd", seed: int = 0, encoder: bool = True) -> Path:
    """TAESD (engine/taesd.py) at its real size (~1 M parameters per half), random
    init, as the original single files users keep in `VAE-approx/`: the state
    dicts of the `nn.Sequential` stacks, the decoder's indices one above
    diffusers' (its leading clamp has no parameters)."""
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = AutoencoderTiny()
    folder.mkdir(parents=True, exist_ok=True)

    def original(module, shift: int) -> dict:
        out = {}
        for key, value in module.state_dict().items():
            index, _, rest = key.removeprefix("layers.").partition(".")
            out[f"{int(index) + shift}.{rest}"] = value.contiguous()
        return out

    save_file(original(vae.decoder, 1), str(folder / f"{prefix}_decoder.safetensors"))
    if encoder:
        save_file(original(vae.encoder, 0), str(folder / f"{prefix}_encoder.safetensors"))
    return folder
