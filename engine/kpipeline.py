"""The pipeline every WebUI sampler runs in (engine/ksampling.py's functions).

It takes a diffusers pipeline's call arguments and runs the loop as the WebUI
does with k-diffusion: sigmas by the schedule type (engine/schedules.py), the
noise from each image's seeded generator (engine/noise.py) or a Brownian tree,
img2img over the WebUI's last t_enc + 1 steps. x starts at the first sigma (noise, or the encoded image plus
noise), the UNet is a denoiser D(x, sigma) -> x0 (engine/denoiser.py), and for
inpainting with an ordinary model D's estimate keeps the known image outside
the mask (the WebUI's way; diffusers re-noises the image instead, which needs
a scheduler). Encoding and decoding use the model's own VAE.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from engine import ksampling, restore, schedules, tiled
from engine.denoiser import Denoiser, Guidance, embed_guidance, guided_unet
from engine.noise import DEFAULT_RNG, ImageNoise
from engine.samplers import SamplerSpec
from protocol.sampler_options import SamplerOptions, s_tmax

ENCODE_TILE = 1024  # pixels: larger inputs (hires passes) encode in tiles


@dataclass
class NoiseOptions:
    """How the noise is made (engine/noise.py): the WebUI's variation seed, resize
    seed, RNG source and eta noise seed delta."""

    subseeds: list[int] | None = None
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] = (0, 0)  # (width, height); (0, 0) = off
    rng: str = DEFAULT_RNG
    eta_noise_seed_delta: int = 0


class KPipeline:
    """txt2img without `image`, img2img with it, inpainting with `mask_image` too.

    `sampler` is a SamplerSpec (or, as before, a function name of
    engine/ksampling.py with `karras` choosing its spacing); `schedule` a
    schedule type ("Automatic": the sampler's own)."""

    def __init__(self, model: Any, sampler: SamplerSpec | str, karras: bool = False, eta: float = 1.0,
                 check: Callable[[], None] | None = None, schedule: str = "Automatic",
                 noise: NoiseOptions | None = None, regions: Any = None, restoring: Any = None,
                 options: SamplerOptions | None = None):
        if isinstance(sampler, str):
            sampler = SamplerSpec(sampler, sampler, schedule="Karras" if karras else "Uniform")
        self.model = model  # a LoadedModel
        self.spec = sampler
        self.schedule = sampler.schedule if schedules.canonical(schedule) == "Automatic" else schedules.canonical(schedule)
        self.eta = eta
        self.check = check
        self.noise_options = noise or NoiseOptions()
        self.restoring = restoring  # engine.params.RestoreParams: restore guidance toward the input image
        self.uncond: Callable[[Any, float], Any] | None = None  # DDIM CFG++: the last call's unconditional x0
        self.num_timesteps = 0  # read by the step callback, as on a diffusers pipeline
        self.regions = regions  # engine/regions.py RegionControl, masks in this call's frame; None = no regions
        self.control: Any = None  # a call's ControlNet units (engine/control.py): told the steps of its pass in run()
        self.guidance: Guidance | None = None  # a call's guidance: restore guidance's CFG schedule changes its scale
        self.options = options or SamplerOptions()  # the WebUI's Settings > Sampler parameters

    @property
    def function(self) -> str:
        return self.spec.function

    def sigmas(self, denoiser: Denoiser, steps: int, strength: float | None = None,
               fixed_steps: bool = False) -> tuple[list[float], float]:
        sdxl = getattr(self.model, "family", "") == "sdxl"
        return plan_sigmas(self.spec, self.schedule, denoiser, steps, strength, sdxl, fixed_steps, self.options)

    def __call__(
        self, *, prompt_embeds, negative_prompt_embeds, num_inference_steps: int, guidance_scale: float,
        generator: list, output_type: str = "np", callback_on_step_end=None, pooled_prompt_embeds=None,
        negative_pooled_prompt_embeds=None, width: int | None = None, height: int | None = None, latents=None,
        image: Any = None, mask_image: Image.Image | None = None, strength: float = 1.0, control: Any = None,
        depth_map: np.ndarray | None = None, prompt_schedule: Any = None, fixed_steps: bool = False, **_: Any,
    ) -> SimpleNamespace:
        import torch

        pipe = self.model.base
        unet, device = pipe.unet, pipe._execution_device
        batch = len(generator)
        seeds = [g.initial_seed() for g in generator]
        # The VAE's sampling draws from its own generator, so the images' noise is the seeds' alone.
        init = self._encode(image, torch.Generator("cpu").manual_seed(seeds[0])) if image is not None else None
        if init is not None:
            height, width = init.shape[2] * 8, init.shape[3] * 8
        assert width and height
        options = self.noise_options
        rng = ImageNoise((4, height // 8, width // 8), seeds, options.subseeds, options.subseed_strength,
                         options.resize_from, options.rng, device, options.eta_noise_seed_delta)

        guidance = Guidance(prompt_embeds, negative_prompt_embeds, guidance_scale, pooled_prompt_embeds,
                            negative_pooled_prompt_embeds)
        if self.spec.cfgpp:  # the WebUI maps CFG 0..12.5 to CFG++'s 0..1
            guidance.cfg_scale, guidance.always_uncond = guidance_scale / 12.5, True
        embed_guidance(guidance, unet)  # full LCM checkpoints: the scale as the UNet's timestep_cond
        if pooled_prompt_embeds is not None:  # SDXL: original size, crop (0, 0), target size
            ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=prompt_embeds.dtype)
            guidance.time_ids = ids.repeat(batch, 1)
        extra = None
        keep = None
        if mask_image is not None:
            assert init is not None
            mask = self._mask(mask_image, width, height, device)
            if unet.config.in_channels == 9:  # inpainting model: mask + masked image as extra channels
                pixels = np.asarray(image.convert("RGB")) * (np.asarray(mask_image.convert("L")) < 128)[..., None]
                masked = self._encode(Image.fromarray(pixels.astype(np.uint8)), torch.Generator().manual_seed(seeds[0]))
                extra = torch.cat([mask, masked], dim=1).repeat(batch, 1, 1, 1)
            else:
                keep = 1.0 - mask
        if unet.config.in_channels == 5:  # SD 2's depth model: the depth map as a fifth channel
            assert depth_map is not None, "a depth model needs the image's depth map"
            extra = depth_latent(depth_map, height // 8, width // 8, device).repeat(batch, 1, 1, 1)

        def predict(x, t):
            if prompt_schedule is not None:  # [from:to:when], [a|b], AND: this call's conditioning
                prompt_schedule.apply(guidance)
            return guided_unet(unet, x, t, guidance, extra, control)

        if self.regions is not None:  # a prompt per region, blended by the masks at every step
            predict = self.regions.predictor(unet, guidance, extra, self.regions.weights(height // 8, width // 8, device),
                                             control)
        if prompt_schedule is not None:
            prompt_schedule.calls = 0
        denoiser = Denoiser(dict(pipe.scheduler.config), predict, unet.dtype, self.check, lcm=self.spec.lcm,
                            vp_time=self.spec.unipc)
        self.control, self.guidance = control, guidance
        if self.spec.cfgpp:
            self.uncond = lambda x, sigma: denoiser.to_x0(x, sigma, guidance.last_uncond.float())
        x0 = None
        if init is not None:
            x0 = init.float().expand(batch, -1, -1, -1) if init.shape[0] == 1 else init.float()
            if keep is not None:
                denoiser.known = (x0, keep)
        start = latents.to(device, torch.float32) if latents is not None and x0 is None else None

        def progress(x, denoised, done: float) -> None:
            if callback_on_step_end is not None:
                step = min(self.num_timesteps, max(1, round(done * self.num_timesteps))) - 1
                callback_on_step_end(self, step, None, {"latents": x})

        with torch.inference_mode():
            x = self.run(denoiser, num_inference_steps, rng, x0=x0, strength=strength, start=start, callback=progress,
                         fixed_steps=fixed_steps)
            if keep is not None:
                x = denoiser.known[0] * keep + x * (1.0 - keep)
            if output_type == "latent":
                return SimpleNamespace(images=x.to(unet.dtype))
            return SimpleNamespace(images=decode_images(pipe.vae, x))

    def run(self, denoiser: Any, steps: int, rng: ImageNoise, x0: Any = None, strength: float = 1.0, start: Any = None,
            callback: ksampling.Callback = ksampling._none, fixed_steps: bool = False):
        """The sampling itself, on any denoiser (with the model's `log_sigmas`):
        txt2img from the seeds' noise (or `start`), img2img from the clean latent
        x0; returns the final latent."""
        import torch

        sigmas, start_sigma = self.sigmas(denoiser, steps, strength if x0 is not None else None, fixed_steps)
        noise = rng.first().to(rng.device, torch.float32) if start is None else start
        if x0 is not None:
            x = x0 + noise * start_sigma
            if self.spec.timesteps:  # noised to one timestep, sampled from the next one down (the WebUI's way)
                x = x * math.sqrt((1 + sigmas[0] ** 2) / (1 + start_sigma**2))
        else:
            # Timestep samplers start from unit noise in x_t = sqrt(a) x0 + sqrt(1 - a) eps, and so
            # does every sampler with the WebUI's "SGM noise multiplier" (txt2img only, as there).
            if self.spec.timesteps:
                x = noise * math.sqrt(1 + sigmas[0] ** 2)
            else:
                x = noise * (math.sqrt(1 + start_sigma**2) if self.options.sgm_noise_multiplier else start_sigma)
        self.num_timesteps = max(1, len(sigmas) - 1)
        if self.control is not None:  # the units' guidance start/end are fractions of these steps
            self.control.schedule([denoiser.timestep(s) for s in sigmas[:-1] if s > 0])
        function, r = self.spec.function, self.restoring
        if r is not None and x0 is not None:  # pull each step's x0 toward the input's latent (SUPIR)
            function = restore.sampler_function(self.spec)
            gamma = restore.churn_gamma(len(sigmas) - 1, r.s_churn) if function == restore.EDM else 0.0
            restore.install(denoiser, self.guidance, x0, r.guidance, r.cfg_start, sigmas, gamma)
        else:
            r = None
        step_noise = self._noise_sampler(rng, sigmas, rng.seeds, x)
        options = {**self.spec.sampler_options(), **sampler_settings(self.spec, self.options)}
        if self.spec.cfgpp:
            options["uncond"] = self.uncond
        x = restore.sample(function, denoiser, x, sigmas, step_noise, callback, self.eta,
                           r.s_churn if r else 0.0, r.s_noise if r else 1.0, **options)
        if self.spec.timesteps:  # ends at the lowest timestep, decoded as it is
            x = x / math.sqrt(1 + sigmas[-1] ** 2)
        return x

    def _noise_sampler(self, rng: ImageNoise, sigmas: list[float], seeds: list[int], x) -> ksampling.Noise:
        """The SDE samplers' Brownian tree over the sigma range, one tree per image
        seed (the WebUI's batch-deterministic noise); the others continue each
        image's generator."""
        if self.spec.brownian:
            positive = [s for s in sigmas if s > 0]
            return brownian_noise(x, min(positive), max(positive), seeds)
        return lambda sigma, sigma_next: rng.next().to(x.device, x.dtype)

    def _encode(self, image: Any, generator):
        """A PIL image (or a list, one per image of the batch) -> scaled latents;
        a tensor is a latent already (hires fix's "Latent" upscaler)."""
        import torch

        pipe = self.model.base
        if isinstance(image, list):
            return torch.cat([self._encode(im, generator) for im in image])
        if not isinstance(image, Image.Image):
            return image.to(pipe._execution_device)
        rgb = np.asarray(image.convert("RGB"))
        return tiled.encode(pipe.vae, rgb, ENCODE_TILE, generator, pipe._execution_device, pipe.unet.dtype)

    @staticmethod
    def _mask(mask_image: Image.Image, width: int, height: int, device):
        """255 = repaint -> 1 x 1 x h/8 x w/8 of 0/1, as diffusers binarises and resizes it."""
        import torch

        small = mask_image.convert("L").resize((width // 8, height // 8), Image.NEAREST)
        return torch.from_numpy((np.asarray(small) >= 128).astype(np.float32))[None, None].to(device)


def sampler_settings(spec: SamplerSpec, options: SamplerOptions) -> dict[str, Any]:
    """The WebUI's sampler parameters a sampler function is given: churn for
    Euler/Heun/DPM2, sigma noise where the WebUI passes it, UniPC's own."""
    out: dict[str, Any] = {}
    if spec.churn:
        out.update(s_churn=options.s_churn, s_tmin=options.s_tmin, s_tmax=s_tmax(options))
    if spec.s_noise:
        out["s_noise"] = options.s_noise
    if spec.unipc:
        out.update(order=options.uni_pc_order, variant=options.uni_pc_variant,
                   lower_order_final=options.uni_pc_lower_order_final)
    return out


def plan_sigmas(spec: SamplerSpec, schedule: str, denoiser: Denoiser, steps: int, strength: float | None = None,
                sdxl: bool = False, fixed_steps: bool = False,
                options: SamplerOptions | None = None) -> tuple[list[float], float]:
    """The sigmas to walk and the sigma of the start noise, as the WebUI picks them.
    img2img (a strength) runs the last t_enc + 1 steps of the full schedule,
    t_enc = int(strength * steps); with `fixed_steps` (the WebUI's hires pass)
    exactly `steps` steps, of a schedule of int(steps / strength). `options`:
    the WebUI's schedule overrides (sigma min/max, rho, Beta's alpha and beta,
    always discarding the next-to-last sigma)."""
    options = options or SamplerOptions()
    discrete = denoiser.discrete
    t_enc = None
    if strength is not None:
        if fixed_steps:
            t_enc, steps = steps - 1, int(steps / min(strength, 0.999))
        else:
            t_enc = int(min(strength, 0.999) * steps)
    # "Always discard next-to-last sigma": one more step scheduled; the timestep
    # samplers only schedule the extra step (the WebUI drops nothing there).
    discard = spec.discard_penultimate or options.always_discard_next_to_last_sigma
    if spec.unipc:
        return schedules.unipc_sigmas(steps + discard, discrete, t_enc, options.uni_pc_skip_type)
    if spec.timesteps:
        return schedules.timestep_sigmas(steps + discard, discrete, t_enc)
    if spec.lcm:
        full = denoiser.lcm_sigmas(steps + discard)
        full = full[:-2] + full[-1:] if discard else full
    else:
        full = schedules.sigmas(schedule, steps, discrete, sdxl, discard, options.sigma_min, options.sigma_max,
                                options.rho, (options.beta_dist_alpha, options.beta_dist_beta))
    if spec.function in ("sample_dpm_fast", "sample_dpm_adaptive") and strength is None:
        # txt2img: the WebUI scales the start noise by the schedule's first sigma but gives
        # the DPM-Solvers the model's whole range and `steps` calls.
        return schedules.uniform(steps, discrete), full[0]
    if t_enc is not None:
        full = full[max(0, steps - t_enc - 1):]
    return full, full[0]


def brownian_noise(x, sigma_min: float, sigma_max: float, seeds: list[int]) -> ksampling.Noise:
    """Unit noise for the step from sigma to sigma_next from a Brownian tree per
    image (torchsde's, as k-diffusion's BrownianTreeNoiseSampler builds it): the
    increment over [sigma_next, sigma] divided by sqrt of its length."""
    import torch
    import torchsde

    t0, t1 = torch.tensor(sigma_min, dtype=torch.float32), torch.tensor(sigma_max, dtype=torch.float32)
    w0 = torch.zeros_like(x[0])
    trees = [torchsde.BrownianTree(t0, w0, t1, entropy=seed) for seed in seeds]

    def noise(sigma: float, sigma_next: float):
        a, b = torch.tensor(sigma, dtype=torch.float32), torch.tensor(sigma_next, dtype=torch.float32)
        low, high, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():  # torchsde warns when a query rounds a hair outside [t0, t1]
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(low, high) for tree in trees]) * sign
        return w / (high - low).abs().sqrt()

    return noise


def depth_latent(depth: np.ndarray, h: int, w: int, device):
    """A depth map (near = bright) -> 1 x 1 x h x w in -1..1, as diffusers'
    StableDiffusionDepth2ImgPipeline.prepare_depth_map scales MiDaS's output."""
    import torch
    import torch.nn.functional as F

    d = torch.from_numpy(np.asarray(depth, np.float32).reshape(depth.shape[0], depth.shape[1], -1)[..., 0])
    d = F.interpolate(d[None, None], size=(h, w), mode="bicubic", align_corners=False)
    lo, hi = d.amin(), d.amax()
    d = 2.0 * (d - lo) / (hi - lo) - 1.0 if hi > lo else torch.zeros_like(d)
    return d.to(device)


def decode_images(vae, latents) -> np.ndarray:
    """Scaled latents -> N x H x W x 3 floats in 0..1 (what pipelines return as "np")."""
    import torch

    from engine.vae_precision import full_precision

    def run():
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample

    with full_precision(vae), torch.inference_mode():  # SDXL's VAE overflows in float16
        decoded = run()
        if vae.dtype == torch.float16 and not torch.isfinite(decoded).all():
            # The WebUI's "revert VAE to 32-bit floats" on NaN: some SD 1.x VAEs overflow too.
            with full_precision(vae, force=True):
                decoded = run()
    return ((decoded.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
