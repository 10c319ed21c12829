"""VAE swap: a separate VAE file (`VAE/` folder) per request or as the model's
default (the job picks which: engine/jobs.py).

The file is loaded through diffusers' single-file loader with the
checkpoint's own VAE config, kept for later jobs, and swapped into every
pipeline of the model; a request without one gets the model's own VAE back.
"""

from __future__ import annotations

from engine import runtime
from engine.models import LoadedModel, ModelManager
from engine.registry import VAE, Registry
from engine.weights import load_failure


def activate(model: LoadedModel, manager: ModelManager, registry: Registry, name: str) -> None:
    if model.own_vae is None:
        model.own_vae = model.base.vae
    if not name:
        vae = model.own_vae
    else:
        entry = registry.get(name, VAE, field="vae")
        if entry.name not in model.vaes:
            model.vaes[entry.name] = _load(model, manager, entry)
        vae = model.vaes[entry.name]
    if model.base.vae is not vae:
        for pipe in {id(p): p for p in [model.base, *model.tasks.values()]}.values():
            pipe.register_modules(vae=vae)


def _load(model: LoadedModel, manager: ModelManager, entry):
    from diffusers import AutoencoderKL

    config = manager.config_dir(model.entry, model.family)
    try:
        vae = AutoencoderKL.from_single_file(
            str(entry.path), config=str(config), subfolder="vae", local_files_only=True, torch_dtype=manager.dtype
        )
    except Exception as exc:
        raise load_failure(entry.path, f"VAE {entry.name}", exc, field="vae") from exc
    return runtime.cpu_layout(vae.to(manager.device), manager.device)
