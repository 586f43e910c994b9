#!/usr/bin/env python3
"""Dump the sigma schedules k-diffusion samplers walk, for SD 1.x, as one JSON test fixture.

Usage: sigma_fixtures.py OUT.json        (the committed copy is fixtures/schedules/sigmas.json)

Needs the parity venv (../shared/parity/README.md) plus `pip install k-diffusion==0.1.1.post1
--no-deps` (its sampling/external modules need only torch, scipy, torchsde, torchdiffeq).

The model's sigmas are k-diffusion's `DiscreteEpsDDPMDenoiser` ones, sqrt((1 - ᾱ) / ᾱ) in f32,
with ᾱ from diffusers' scheduler built from fixtures/tiny/scheduler/scheduler_config.json.
For 1, 2, 10, 30 and 1000 steps the file holds:

  normal, karras, exponential, polyexponential
      k-diffusion: DiscreteSchedule.get_sigmas(n), get_sigmas_karras (ρ = 7),
      get_sigmas_exponential, get_sigmas_polyexponential (ρ = 1), σ range from the model.
  sgm_uniform, simple, ddim_uniform, beta
      ComfyUI's comfy/samplers.py schedulers. ComfyUI is not on PyPI, so the functions below are
      copied from its source (normal_scheduler with sgm=True, simple_scheduler, ddim_scheduler,
      beta_scheduler with α = β = 0.6) together with the two methods of
      comfy/model_sampling.py's ModelSamplingDiscrete they call, here over the same f32 sigmas.
  a1111_beta
      A1111's modules/sd_schedulers.py beta_scheduler (also copied: A1111 is not on PyPI).

Each case has the sigmas (n + 1 of them, or fewer for "beta", which drops repeated timesteps,
and ddim_uniform's own count), and `timesteps`: k-diffusion's sigma_to_t of every sigma but the
last, the timestep its model wrapper hands the UNet.

The script also checks that A1111's "Uniform"/"Normal" and ComfyUI's "normal" give bit for bit
the sigmas of k-diffusion's get_sigmas, which is why the Rust side has one "normal".

Further sections: diffusers' EulerDiscreteScheduler with use_karras_sigmas=True (the same
formula in float64 with its own _sigma_to_t), sigma_to_t / t_to_sigma probes, and scipy's
beta.ppf for the inverse regularized incomplete beta function.

Float32 values are written as the float64 numbers they equal.
"""
import importlib.metadata
import json
import math
import os
import sys

import diffusers
import numpy
import scipy
import scipy.stats
import torch
from diffusers import EulerDiscreteScheduler

# The one loader of k-diffusion's sampling modules without its training dependencies.
from sampler_fixtures import import_k_diffusion


k_sampling, k_external = import_k_diffusion()
DiscreteSchedule = k_external.DiscreteSchedule
get_sigmas_karras = k_sampling.get_sigmas_karras
get_sigmas_exponential = k_sampling.get_sigmas_exponential
get_sigmas_polyexponential = k_sampling.get_sigmas_polyexponential

HERE = os.path.dirname(os.path.abspath(__file__))
SD1_CONFIG = os.path.join(HERE, "..", "..", "fixtures", "tiny", "scheduler", "scheduler_config.json")
STEPS = [1, 2, 10, 30, 1000]


def f32_list(t):
    return [float(x) for x in torch.as_tensor(t, dtype=torch.float32).flatten().tolist()]


# ---- ComfyUI (comfy/model_sampling.py ModelSamplingDiscrete, comfy/samplers.py), copied ----

class ComfyModelSampling:
    """ModelSamplingDiscrete.set_sigmas / timestep / sigma, over given sigmas."""

    def __init__(self, sigmas):
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)


def comfy_simple_scheduler(model_sampling, steps):
    s = model_sampling
    sigs = []
    ss = len(s.sigmas) / steps
    for x in range(steps):
        sigs += [float(s.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def comfy_ddim_scheduler(model_sampling, steps):
    s = model_sampling
    sigs = []
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]

    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs += [float(s.sigmas[x])]
        x += ss
    sigs = sigs[::-1]
    return torch.FloatTensor(sigs)


def comfy_normal_scheduler(model_sampling, steps, sgm=False, floor=False):
    s = model_sampling
    start = s.timestep(s.sigma_max)
    end = s.timestep(s.sigma_min)

    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)

    sigs = []
    for x in range(len(timesteps)):
        ts = timesteps[x]
        sigs.append(float(s.sigma(ts)))

    if append_zero:
        sigs += [0.0]

    return torch.FloatTensor(sigs)


def comfy_beta_scheduler(model_sampling, steps, alpha=0.6, beta=0.6):
    total_timesteps = (len(model_sampling.sigmas) - 1)
    ts = 1 - numpy.linspace(0, 1, steps, endpoint=False)
    ts = numpy.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total_timesteps)

    sigs = []
    last_t = -1
    for t in ts:
        if t != last_t:
            sigs += [float(model_sampling.sigmas[int(t)])]
        last_t = t
    sigs += [0.0]
    return torch.FloatTensor(sigs)


# ---- A1111 (modules/sd_schedulers.py), copied; inner_model is k-diffusion's DiscreteSchedule ----

def a1111_uniform(n, sigma_min, sigma_max, inner_model, device):
    return inner_model.get_sigmas(n).to(device)


def a1111_normal_scheduler(n, sigma_min, sigma_max, inner_model, device, sgm=False, floor=False):
    start = inner_model.sigma_to_t(torch.tensor(sigma_max))
    end = inner_model.sigma_to_t(torch.tensor(sigma_min))

    if sgm:
        timesteps = torch.linspace(start, end, n + 1)[:-1]
    else:
        timesteps = torch.linspace(start, end, n)

    sigs = []
    for x in range(len(timesteps)):
        ts = timesteps[x]
        sigs.append(inner_model.t_to_sigma(ts))
    sigs += [0.0]
    return torch.FloatTensor(sigs).to(device)


def a1111_beta_scheduler(n, sigma_min, sigma_max, inner_model, device, alpha=0.6, beta=0.6):
    # A1111 reads alpha and beta from shared.opts.beta_dist_alpha / beta_dist_beta (default 0.6).
    timesteps = 1 - numpy.linspace(0, 1, n)
    timesteps = [scipy.stats.beta.ppf(x, alpha, beta) for x in timesteps]
    sigmas = [sigma_min + (x * (sigma_max - sigma_min)) for x in timesteps]
    sigmas += [0.0]
    return torch.FloatTensor(sigmas).to(device)


# ---- the fixture ----

def model_sigmas():
    with open(SD1_CONFIG) as f:
        cfg = json.load(f)
    for k in ("_class_name", "_diffusers_version", "skip_prk_steps"):
        cfg.pop(k, None)
    alphas_cumprod = EulerDiscreteScheduler.from_config(cfg).alphas_cumprod
    return cfg, ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def main():
    out = sys.argv[1]
    cfg, sigmas = model_sigmas()
    ds = DiscreteSchedule(sigmas, quantize=False)
    comfy = ComfyModelSampling(sigmas)
    sigma_min, sigma_max = ds.sigma_min.item(), ds.sigma_max.item()

    schedules = {
        "normal": lambda n: ds.get_sigmas(n),
        "karras": lambda n: get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0),
        "exponential": lambda n: get_sigmas_exponential(n, sigma_min, sigma_max),
        "polyexponential": lambda n: get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1.0),
        "sgm_uniform": lambda n: comfy_normal_scheduler(comfy, n, sgm=True),
        "simple": lambda n: comfy_simple_scheduler(comfy, n),
        "ddim_uniform": lambda n: comfy_ddim_scheduler(comfy, n),
        "beta": lambda n: comfy_beta_scheduler(comfy, n),
        "a1111_beta": lambda n: a1111_beta_scheduler(n, sigma_min, sigma_max, ds, "cpu"),
    }
    cases = []
    for name, make in schedules.items():
        for n in STEPS:
            s = make(n).to(torch.float32)
            cases.append({
                "schedule": name,
                "steps": n,
                "sigmas": f32_list(s),
                "timesteps": f32_list(ds.sigma_to_t(s[:-1])),
            })
        for n in STEPS:
            normal = ds.get_sigmas(n)
            for other in (
                comfy_normal_scheduler(comfy, n),
                a1111_uniform(n, sigma_min, sigma_max, ds, "cpu"),
                a1111_normal_scheduler(n, sigma_min, sigma_max, ds, "cpu"),
            ):
                assert torch.equal(other, normal), n
            assert torch.equal(
                a1111_normal_scheduler(n, sigma_min, sigma_max, ds, "cpu", sgm=True),
                comfy_normal_scheduler(comfy, n, sgm=True),
            ), n

    diffusers_karras = []
    for n in STEPS:
        sched = EulerDiscreteScheduler.from_config(cfg, use_karras_sigmas=True)
        sched.set_timesteps(n)
        diffusers_karras.append({
            "steps": n,
            "sigmas": f32_list(sched.sigmas),
            "timesteps": f32_list(sched.timesteps),
            "init_noise_sigma": float(torch.tensor(float(sched.init_noise_sigma), dtype=torch.float32)),
        })

    # Below the smallest, on, between and above the training sigmas.
    probe_sigmas = torch.tensor([0.001, sigma_min, 0.05, 0.1, 0.5, 1.0, 1.2345, 3.0, 7.5, 14.0, sigma_max, 20.0])
    probe_sigmas = torch.cat([probe_sigmas, sigmas[[1, 17, 500, 998]]])
    probe_t = torch.tensor([0.0, 0.25, 0.5, 1.0, 17.3, 499.5, 500.0, 998.9, 999.0])

    beta_ppf = []
    for a, b in [(0.6, 0.6), (2.0, 5.0), (0.5, 3.0), (5.0, 0.7)]:
        p = numpy.concatenate([[0.0, 1e-6, 1e-4, 0.001], numpy.linspace(0.01, 0.99, 50), [0.5, 0.999, 1 - 1e-9, 1.0]])
        beta_ppf.append({"a": a, "b": b, "p": p.tolist(), "x": scipy.stats.beta.ppf(p, a, b).tolist()})

    fixture = {
        "meta": {
            "k_diffusion": importlib.metadata.version("k-diffusion"),
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "scipy": scipy.__version__,
            "numpy": numpy.__version__,
            "script": "tools/parity/sigma_fixtures.py",
        },
        "config": cfg,
        "cases": cases,
        "diffusers_karras": diffusers_karras,
        "sigma_to_t": {"sigma": f32_list(probe_sigmas), "t": f32_list(ds.sigma_to_t(probe_sigmas))},
        "t_to_sigma": {"t": f32_list(probe_t), "sigma": f32_list(ds.t_to_sigma(probe_t))},
        "beta_ppf": beta_ppf,
    }
    with open(out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
