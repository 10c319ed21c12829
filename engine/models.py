"""Loading checkpoints into diffusers pipelines, fully offline, and caching.

Single-file checkpoints go through diffusers' `from_single_file` with a
local config folder: a `<stem>.config/` folder beside the file if present,
else the configs shipped in `engine/configs/<family>/`. Tokenizers come from
the same sidecar or are derived offline from CLIP's BPE table. Nothing here
can reach a model hub.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import runtime
from engine.errors import EngineError
from engine.families import FAMILIES, Detected, detect
from engine.paths import cache_dir
from engine.registry import ModelEntry
from engine.tokenizers import clip_tokenizer
from engine.weights import load_failure, load_weights

_PIPELINES = {
    # family group -> task -> diffusers pipeline class name
    "sd": {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    },
    "sdxl": {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    },
}


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc).lower()
    # CUDA: "CUDA out of memory"; the CPU allocator: "can't allocate memory" / "not enough memory".
    markers = ("out of memory", "not enough memory", "can't allocate memory")
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and any(m in text for m in markers))


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing memory must never raise
        pass


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


@dataclass
class LoadedModel:
    entry: ModelEntry
    family: str
    base: Any  # the txt2img pipeline; other tasks share its components
    tasks: dict[str, Any] = field(default_factory=dict)
    adapters: set[str] = field(default_factory=set)  # LoRA adapters loaded so far
    vaes: dict[str, Any] = field(default_factory=dict)  # swap-in VAEs loaded so far
    embeddings: set[str] = field(default_factory=set)  # textual inversions loaded so far
    own_vae: Any = None  # the checkpoint's VAE, while another is swapped in
    native_size: int = 0  # 0 = the family's (an SD2 epsilon model is a 512 "base" model)
    depth: bool = False  # SD 2's depth-to-image model: its UNet takes the depth map as a fifth channel
    # Models built for this checkpoint (a SUPIR adaptor, engine/supir_upscale.py): released with it, and
    # when it steps aside for another checkpoint (they are not worth keeping in the spare's RAM).
    attached: dict[str, Any] = field(default_factory=dict)
    approx_decoder: Any = None  # TAESD for this job's previews, where the models folder has one (engine/taesd.py)

    def __post_init__(self) -> None:
        self.native_size = self.native_size or self.entry.native_size

    def pipeline(self, task: str):
        if task not in self.tasks:
            import diffusers

            group = "sdxl" if self.family == "sdxl" else "sd"
            cls = getattr(diffusers, _PIPELINES[group][task])
            # from_pipe casts the shared components to its `dtype`, float32 unless told (diffusers
            # 0.42): without it the first img2img on a GPU turned the whole fp16 model into float32.
            pipe = self.base if task == "txt2img" else cls.from_pipe(self.base, dtype=self.base.unet.dtype)
            pipe.set_progress_bar_config(disable=True)
            self.tasks[task] = pipe
        return self.tasks[task]


def predicts_v(unet) -> bool:
    """Whether a UNet predicts v rather than noise, by the WebUI's test: at the
    last timestep, for an input of 0.5 everywhere, a noise predictor answers
    about the input (the input is almost all noise there), a v predictor far
    below it (v is then about minus the clean image it imagines)."""
    import torch

    device = next(unet.parameters()).device
    dtype = unet.dtype
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=device, dtype=dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=device, dtype=dtype)
    with torch.inference_mode():
        out = unet(x, torch.tensor(999.0, device=device), encoder_hidden_states=context).sample
    return float((out.float() - x[:, : out.shape[1]].float()).mean()) < -1.0


def default_device() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


class ModelManager:
    """Keeps one checkpoint resident; loads another on request."""

    def __init__(
        self,
        device: str | None = None,
        dtype: Any = None,
        keep_spare: bool = True,
        offload: bool = False,
        compile: bool = False,
    ) -> None:
        self.offload = offload  # CUDA: model CPU offload (low VRAM)
        self.compile = compile  # CUDA: torch.compile the UNet (slow first job, faster after)
        self.cpu_bf16 = False  # CPU: the UNet under bf16 autocast (runtime.autocast_unet); serve --cpu-bf16
        auto_device, auto_dtype = default_device()
        self.device = device or auto_device
        self.dtype = dtype or (auto_dtype if self.device == auto_device else None)
        if self.dtype is None:
            import torch

            self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.loaded: LoadedModel | None = None
        # The previously used model, kept in CPU RAM, so switching back is cheap
        # (as the WebUI's "checkpoints to cache in RAM": one).
        self.spare: LoadedModel | None = None
        self.keep_spare = keep_spare
        self._lock = threading.Lock()

    def get(self, entry: ModelEntry) -> LoadedModel:
        with self._lock:
            if self.loaded is not None and self.loaded.entry == entry:
                return self.loaded
            previous, self.loaded = self.loaded, None
            if self.spare is not None and self.spare.entry == entry:
                self.loaded, self.spare = self.spare, None
                if not self.offload:
                    self.loaded.base.to(self.device)
            if previous is not None:
                previous.attached.clear()
            if previous is not None and self.keep_spare:
                if not self.device.startswith("cpu") and not self.offload:
                    previous.base.to("cpu")
                self.spare = previous
            free_memory()
            if self.loaded is not None:
                return self.loaded
            try:
                self.loaded = self._load(entry)
            except EngineError:
                raise
            except Exception as exc:
                self.spare = None  # make room: a failed load may be short of memory
                free_memory()
                if is_out_of_memory(exc):
                    raise EngineError("out_of_memory", f"not enough memory to load {entry.name}") from exc
                raise load_failure(entry.path, entry.name, exc, field="model") from exc
            return self.loaded

    def unload(self) -> None:
        """Drop every model (after out-of-memory): the next job reloads."""
        for model in (self.loaded, self.spare):
            if model is not None:
                model.attached.clear()
        self.loaded = self.spare = None
        free_memory()

    # -- loading ----------------------------------------------------------------
    def _load(self, entry: ModelEntry) -> LoadedModel:
        import diffusers

        # A server's log is for its own events, not per-load library chatter.
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()

        depth = entry.depth
        if entry.family:
            family = entry.family.name
        else:  # a .ckpt: its keys say what it is, read with the weights-only unpickler
            detected = self._detect_pickle(entry)
            family, depth = detected.family.name, detected.depth
        group = "sdxl" if family == "sdxl" else "sd"
        cls = getattr(diffusers, _PIPELINES[group]["txt2img"])
        extra: dict[str, Any] = {}
        if group == "sd":
            extra.update(safety_checker=None, requires_safety_checker=False)
        if entry.format == "diffusers":
            # `dtype`: diffusers 0.42's pipelines deprecate `torch_dtype` (from_single_file still takes it).
            pipe = cls.from_pretrained(str(entry.path), local_files_only=True, dtype=self.dtype, **extra)
        else:
            config = self._config_dir(dataclasses.replace(entry, depth=depth), family)
            extra.update(self._tokenizers(config, family))
            pipe = cls.from_single_file(
                str(entry.path), config=str(config), local_files_only=True, torch_dtype=self.dtype, **extra
            )
        self._place(pipe)
        pipe.set_progress_bar_config(disable=True)
        model = LoadedModel(entry, family, pipe, depth=depth or pipe.unet.config.in_channels == 5)
        if family == "sd2" and entry.format != "diffusers" and not entry.path.with_suffix(".config").is_dir():
            # SD2 comes as 768 v-prediction models and 512 epsilon "base" models
            # with the same keys; no config says which, so ask the UNet.
            if not predicts_v(pipe.unet):
                pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
                model.native_size = 512
        if self.compile and self.device.startswith("cuda"):
            pipe.unet = runtime.compile_unet(pipe.unet)
        if self.cpu_bf16 and self.device == "cpu":
            runtime.autocast_unet(pipe.unet)
        return model

    def _place(self, pipe) -> None:
        """Onto the device, with the GPU options: channels-last, offload."""
        import torch

        if not self.device.startswith("cuda"):
            pipe.to(self.device)
            runtime.cpu_layout(pipe.vae, self.device)  # a whole-image decode 10-20% faster (runtime.cpu_layout)
            return
        if self.offload:
            # Whole models move to the GPU only while they run: SDXL at 1024 fits
            # in about 8 GB; the VAE decodes in tiles.
            pipe.enable_model_cpu_offload(device=self.device)
            pipe.vae.enable_tiling()
        else:
            pipe.to(self.device)
        pipe.unet.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores

    def _detect_pickle(self, entry: ModelEntry) -> Detected:
        """Family of a .ckpt: read its keys with the safe (weights-only) unpickler."""
        try:
            state = load_weights(entry.path, mmap=True)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError("model_load_failed", f"could not read {entry.path.name}: {one_line(exc)}") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        shapes = {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")} if isinstance(state, dict) else {}
        detected = detect(shapes)
        del state
        if detected is None:
            raise EngineError("model_load_failed", f"{entry.path.name} is not a Stable Diffusion checkpoint")
        return detected

    def config_dir(self, entry: ModelEntry, family: str) -> Path:
        """The diffusers config folder a model was (or would be) loaded with."""
        return entry.path if entry.format == "diffusers" else self._config_dir(entry, family)

    def _config_dir(self, entry: ModelEntry, family: str) -> Path:
        sidecar = entry.path.with_suffix(".config")
        if sidecar.is_dir():
            return sidecar
        bundled = FAMILIES[family].config_dir
        if not entry.inpainting and not entry.depth:
            return bundled
        # Inpainting checkpoints: the same configs with a 9-channel UNet input; SD 2's
        # depth model: 5 (the latent and the depth map).
        channels, variant = (9, "inpainting") if entry.inpainting else (5, "depth")
        derived = cache_dir() / "configs" / f"{family}-{variant}"
        if not (derived / "model_index.json").is_file():
            tmp = derived.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(bundled, tmp)
            unet = json.loads((tmp / "unet" / "config.json").read_text("utf-8"))
            unet["in_channels"] = channels
            (tmp / "unet" / "config.json").write_text(json.dumps(unet, indent=2), "utf-8")
            shutil.rmtree(derived, ignore_errors=True)
            tmp.replace(derived)
        return derived

    @staticmethod
    def _tokenizers(config: Path, family: str) -> dict[str, Any]:
        from transformers import CLIPTokenizer

        def local(sub: str, pad: str):
            folder = config / sub
            if (folder / "vocab.json").is_file():
                return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, local_files_only=True)
            # A copy per model: textual inversions add tokens to it.
            return copy.deepcopy(clip_tokenizer(pad))

        # SD1.x pads with <|endoftext|>; OpenCLIP encoders (SD2, SDXL's second) pad with "!".
        if family == "sdxl":
            return {"tokenizer": local("tokenizer", "<|endoftext|>"), "tokenizer_2": local("tokenizer_2", "!")}
        return {"tokenizer": local("tokenizer", "!" if family == "sd2" else "<|endoftext|>")}
