"""The WebUI's schedule types: how a sampler's sigmas are spaced.

Each takes the step count and the model's discrete training schedule (its
1000 sigmas, ascending, as k-diffusion's DiscreteSchedule holds them) and
returns the sigmas a sampler walks down, normally ending in 0. They follow the
WebUI 1.10 (modules/sd_schedulers.py), which calls k-diffusion's
get_sigmas_karras / _exponential / _polyexponential with the model's sigma_min
and sigma_max and adds its own; the quirks are kept on purpose, since they
decide the picture: KL Optimal ends at sigma_min instead of 0, DDIM's count
follows 1000 // steps, Align Your Steps interpolates its table unless asked
for 11 steps.

"Automatic" is not a spacing: it means the sampler's own (engine/samplers.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from engine.errors import EngineError

# Schedule type labels, in the WebUI's order; the key is the label, the value its other spellings.
SCHEDULE_TYPES: dict[str, tuple[str, ...]] = {
    "Automatic": ("automatic",),
    "Uniform": ("uniform",),
    "Karras": ("karras",),
    "Exponential": ("exponential",),
    "Polyexponential": ("polyexponential",),
    "SGM Uniform": ("sgm_uniform", "SGMUniform"),
    "KL Optimal": ("kl_optimal",),
    "Align Your Steps": ("align_your_steps",),
    "Simple": ("simple",),
    "Normal": ("normal",),
    "DDIM": ("ddim",),
    "Beta": ("beta",),
}
BETA_ALPHA = BETA_BETA = 0.6  # the WebUI's defaults for the Beta schedule's distribution

# Align Your Steps (Sabour et al. 2024): NVIDIA's 10-step tables for SD 1.5 and SDXL.
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def canonical(name: str) -> str:
    """A schedule type's label from any of its spellings (case and spaces ignored)."""
    folded = name.strip().lower().replace(" ", "").replace("_", "")
    for label, aliases in SCHEDULE_TYPES.items():
        for spelling in (label, *aliases):
            if spelling.lower().replace(" ", "").replace("_", "") == folded:
                return label
    valid = ", ".join(SCHEDULE_TYPES)
    raise EngineError("invalid_request", f"unknown schedule type {name!r}; valid: {valid}", field="schedule_type")


class Discrete:
    """A model's training sigmas and k-diffusion's interpolation between them."""

    def __init__(self, log_sigmas: np.ndarray):
        self.log_sigmas = np.asarray(log_sigmas, dtype=np.float64)  # ascending, one per training timestep

    @property
    def sigma_min(self) -> float:
        return float(math.exp(self.log_sigmas[0]))

    @property
    def sigma_max(self) -> float:
        return float(math.exp(self.log_sigmas[-1]))

    def t_to_sigma(self, t: np.ndarray) -> np.ndarray:
        """Fractional timesteps -> sigmas, interpolating log sigma linearly."""
        return np.exp(np.interp(t, np.arange(len(self.log_sigmas)), self.log_sigmas))

    def sigma_to_t(self, sigma: float) -> float:
        return float(np.interp(math.log(sigma), self.log_sigmas, np.arange(len(self.log_sigmas))))

    def sigma_at(self, t: int) -> float:
        return float(math.exp(self.log_sigmas[t]))

    # The variance-preserving view the WebUI's UniPC takes (its NoiseScheduleVP
    # "discrete"): log alpha = -log(1 + sigma^2) / 2 interpolated linearly in the
    # timestep, where k-diffusion interpolates log sigma. Both agree on the
    # integer timesteps; between them UniPC's own interpolation decides.
    def vp_log_alphas(self) -> np.ndarray:
        return -0.5 * np.log1p(np.exp(2 * self.log_sigmas))

    def vp_t_to_sigma(self, t: float) -> float:
        log_alpha = float(np.interp(t, np.arange(len(self.log_sigmas)), self.vp_log_alphas()))
        return math.sqrt(math.expm1(-2 * log_alpha))

    def vp_sigma_to_t(self, sigma: float) -> float:
        log_alpha = -0.5 * math.log1p(sigma * sigma)
        table = self.vp_log_alphas()[::-1]  # ascending for np.interp
        return float(len(table) - 1 - np.interp(log_alpha, table, np.arange(len(table))))


class Bounded(Discrete):
    """A model's table with the WebUI's "Schedule min/max sigma" overrides: the
    schedules that span sigma_min..sigma_max use these; those that read the
    table itself (Uniform, Simple, DDIM) are unchanged, as in the WebUI."""

    def __init__(self, d: Discrete, sigma_min: float = 0.0, sigma_max: float = 0.0):
        super().__init__(d.log_sigmas)
        self.low, self.high = sigma_min or d.sigma_min, sigma_max or d.sigma_max

    @property
    def sigma_min(self) -> float:
        return self.low

    @property
    def sigma_max(self) -> float:
        return self.high


def _with_zero(values) -> list[float]:
    return [*(float(v) for v in values), 0.0]


def uniform(n: int, d: Discrete) -> list[float]:
    """Timesteps evenly from the last to 0 (k-diffusion's DiscreteSchedule.get_sigmas)."""
    return _with_zero(d.t_to_sigma(np.linspace(len(d.log_sigmas) - 1, 0, n)))


def karras(n: int, d: Discrete, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma^(1/rho)."""
    lo, hi = d.sigma_min ** (1 / rho), d.sigma_max ** (1 / rho)
    return _with_zero((hi + np.linspace(0, 1, n) * (lo - hi)) ** rho)


def exponential(n: int, d: Discrete) -> list[float]:
    return _with_zero(np.exp(np.linspace(math.log(d.sigma_max), math.log(d.sigma_min), n)))


def polyexponential(n: int, d: Discrete, rho: float = 1.0) -> list[float]:
    ramp = np.linspace(1, 0, n) ** rho
    low, high = math.log(d.sigma_min), math.log(d.sigma_max)
    return _with_zero(np.exp(ramp * (high - low) + low))


def sgm_uniform(n: int, d: Discrete) -> list[float]:
    """n timesteps evenly spaced as if for n + 1, the last dropped (SGM's spacing)."""
    ts = np.linspace(d.sigma_to_t(d.sigma_max), d.sigma_to_t(d.sigma_min), n + 1)[:-1]
    return _with_zero(d.t_to_sigma(ts))


def kl_optimal(n: int, d: Discrete) -> list[float]:
    """Evenly spaced in arctan(sigma) (Zhang et al.'s KL-optimal steps); ends at sigma_min."""
    a_min, a_max = math.atan(d.sigma_min), math.atan(d.sigma_max)
    return [math.tan(i / n * a_min + (1 - i / n) * a_max) for i in range(n + 1)]


def align_your_steps(n: int, d: Discrete, sdxl: bool = False) -> list[float]:
    table = AYS_SDXL if sdxl else AYS_SD15
    if n == len(table):
        return [*table, 0.0]
    # Log-linear interpolation of the table to n points, as NVIDIA's recipe says.
    ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), np.log(table[::-1]))
    return _with_zero(np.exp(ys)[::-1])


def simple(n: int, d: Discrete) -> list[float]:
    """Every (1000 / n)-th training sigma from the top."""
    sigmas = np.exp(d.log_sigmas)
    stride = len(sigmas) / n
    return [float(sigmas[-(1 + int(i * stride))]) for i in range(n)] + [0.0]


def normal(n: int, d: Discrete) -> list[float]:
    ts = np.linspace(d.sigma_to_t(d.sigma_max), d.sigma_to_t(d.sigma_min), n)
    return _with_zero(d.t_to_sigma(ts))


def ddim(n: int, d: Discrete) -> list[float]:
    """The training sigmas at timesteps 1, 1 + k, 1 + 2k... (k = 1000 // n), from the top."""
    stride = max(len(d.log_sigmas) // n, 1)
    return _with_zero(d.sigma_at(t) for t in reversed(range(1, len(d.log_sigmas), stride)))


def beta(n: int, d: Discrete, alpha: float = BETA_ALPHA, b: float = BETA_BETA) -> list[float]:
    """Lee et al. (2024), "Beta Sampling is All You Need": timesteps at quantiles of Beta(alpha, beta)."""
    from scipy import stats

    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, b)
    return _with_zero(d.sigma_min + quantiles * (d.sigma_max - d.sigma_min))


SPACINGS: dict[str, Callable[[int, Discrete], list[float]]] = {
    "Uniform": uniform,
    "Karras": karras,
    "Exponential": exponential,
    "Polyexponential": polyexponential,
    "SGM Uniform": sgm_uniform,
    "KL Optimal": kl_optimal,
    "Simple": simple,
    "Normal": normal,
    "DDIM": ddim,
    "Beta": beta,
}


# The default rho of the schedules that take one (the WebUI's Scheduler.default_rho).
DEFAULT_RHO = {"Karras": 7.0, "Polyexponential": 1.0}


def sigmas(schedule: str, n: int, d: Discrete, sdxl: bool = False, discard_penultimate: bool = False,
           sigma_min: float = 0.0, sigma_max: float = 0.0, rho: float = 0.0,
           beta_dist: tuple[float, float] = (BETA_ALPHA, BETA_BETA)) -> list[float]:
    """The sigmas for `n` steps. With `discard_penultimate` (the WebUI's DPM2 and
    DPM++ 3M SDE), one more step is scheduled and the next-to-last sigma dropped.
    `sigma_min`, `sigma_max` and `rho` (0 = the model's / the schedule's own) and
    the Beta schedule's `beta_dist` are the WebUI's Sampler parameters settings."""
    label = canonical(schedule)
    count = n + 1 if discard_penultimate else n
    if sigma_min or sigma_max:
        d = Bounded(d, sigma_min, sigma_max)
    if label == "Align Your Steps":
        out = align_your_steps(count, d, sdxl)
    elif label in DEFAULT_RHO and rho:
        out = SPACINGS[label](count, d, rho)  # type: ignore[call-arg]
    elif label == "Beta":
        out = beta(count, d, *beta_dist)
    else:
        out = SPACINGS.get(label, uniform)(count, d)
    if discard_penultimate:
        out = out[:-2] + out[-1:]
    return out


def webui_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """The WebUI's DDIM/PLMS timesteps, ascending: 1, 1 + k, 1 + 2k... (k = 1000 // steps)."""
    return [min(t + 1, train_steps - 1) for t in range(0, train_steps, train_steps // steps)]


def timestep_sigmas(steps: int, d: Discrete, t_enc: int | None = None) -> tuple[list[float], float]:
    """A timestep sampler's sigmas (descending, from its first timestep down to
    timestep 1, no 0) and the sigma its start noise belongs to. For txt2img the
    WebUI starts from unit noise at the top timestep; for img2img (`t_enc`) it
    noises the image to timestep[t_enc] and samples from one timestep below."""
    ts = webui_timesteps(steps, len(d.log_sigmas))
    if t_enc is None:
        chosen, start = ts, d.sigma_at(ts[-1])
    else:
        chosen, start = ts[: max(t_enc, 1)], d.sigma_at(ts[min(t_enc, len(ts) - 1)])
    return [d.sigma_at(t) for t in chosen][::-1], start


def unipc_sigmas(steps: int, d: Discrete, t_enc: int | None = None, skip_type: str = "time_uniform",
                 train_steps: int = 1000) -> tuple[list[float], float]:
    """The WebUI's UniPC time points as sigmas (descending, ending at the lowest
    timestep's sigma, no 0), and the sigma of the start noise.

    UniPC solves from t_T down to t_0 = 1/1000 in continuous time t (model
    timestep 1000 t - 1): txt2img from t_T = 1 in as many steps as the WebUI's
    DDIM would take timesteps (engine/schedules.webui_timesteps); img2img, as
    the WebUI calls it, from the timestep below the one the image is noised to,
    in t_enc steps. The points are evenly spaced in t ("time_uniform"), in
    sqrt(t) ("time_quadratic") or in log sigma ("logSNR")."""
    ts = webui_timesteps(steps, len(d.log_sigmas))
    if t_enc is None:  # the WebUI runs len(timesteps) steps: 31 for 30 (1000 // 30 = 33)
        t_top, start_t, n = 1.0, ts[-1], len(ts)
    else:
        n = max(t_enc, 1)
        t_top, start_t = (ts[n - 1] + 1) / train_steps, ts[min(n, len(ts) - 1)]
    t_low = 1.0 / train_steps
    if skip_type == "logSNR":
        top, low = d.vp_t_to_sigma(t_top * train_steps - 1), d.vp_t_to_sigma(t_low * train_steps - 1)
        out = np.exp(np.linspace(math.log(top), math.log(low), n + 1)).tolist()
    else:
        times = (np.linspace(t_top**0.5, t_low**0.5, n + 1) ** 2 if skip_type == "time_quadratic"
                 else np.linspace(t_top, t_low, n + 1))
        out = [d.vp_t_to_sigma(t * train_steps - 1) for t in times]
    return [float(s) for s in out], d.sigma_at(start_t)


def alphas(sigmas: Sequence[float]) -> list[float]:
    """Cumulative alphas of variance-preserving diffusion for sigma-space noise levels."""
    return [1.0 / (1.0 + s * s) for s in sigmas]
