#!/usr/bin/env python3
"""Dump diffusers' noise schedules and DDIM / Euler step schedules as JSON test fixtures.

Usage: schedule_fixtures.py OUTDIR        (the committed copy lives in fixtures/schedules/)

Runs diffusers 0.42.1 / torch 2.15 (the parity venv, see ../shared/parity/README.md) and writes

  noise.json  per beta schedule: the scheduler config, betas, alphas_cumprod and the sigma of
              every training timestep, as float32 values (what DDIMScheduler.__init__ and
              EulerDiscreteScheduler.__init__ compute)
  ddim.json   DDIMScheduler.set_timesteps(steps).timesteps and final_alpha_cumprod
  euler.json  EulerDiscreteScheduler.set_timesteps(steps): timesteps, sigmas, init_noise_sigma

Every case stores the exact dict handed to `Cls.from_config`: SD 1.x's scheduler_config.json
(fixtures/tiny/scheduler/, which has no `timestep_spacing`, so each class keeps its own default)
plus the overrides the case names. A case where diffusers' timesteps run past the training
schedule (DDIM, "leading" with steps_offset 1 and 1000 steps gives t=1000) is kept with
"valid": false; an engine must refuse it rather than index out of range.

Float32 values are written as the float64 numbers they equal, so a reader that parses f64 and
casts to f32 gets the exact bits back.

torch.linspace (the betas) is compiled with FMA contraction in the AVX2/AVX512 kernels that
x86 machines run; ATEN_CPU_CAPABILITY=default gives slightly different betas. These fixtures
are written with the default dispatch of an AVX2/AVX512 machine, which the metadata records.
"""
import json
import os
import sys

import diffusers
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

HERE = os.path.dirname(os.path.abspath(__file__))
SD1_CONFIG = os.path.join(HERE, "..", "..", "fixtures", "tiny", "scheduler", "scheduler_config.json")
# 61: numpy's arange overshoots, so "trailing" yields 62 timesteps ending at -1.
STEPS = [1, 2, 3, 7, 10, 20, 30, 50, 61, 1000]


def f32_list(t):
    return [float(x) for x in torch.as_tensor(t, dtype=torch.float32).flatten().tolist()]


def meta():
    return {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "script": "tools/parity/schedule_fixtures.py",
    }


def base_config():
    with open(SD1_CONFIG) as f:
        cfg = json.load(f)
    # from_config ignores these; drop them so the stored configs read as plain scheduler settings.
    for k in ("_class_name", "_diffusers_version", "skip_prk_steps"):
        cfg.pop(k, None)
    return cfg


def noise_cases():
    cases = []
    variants = [
        {},
        {"beta_schedule": "linear"},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    ]
    for over in variants:
        cfg = {**base_config(), **over}
        s = DDIMScheduler.from_config(cfg)
        e = EulerDiscreteScheduler.from_config(cfg)
        assert torch.equal(s.alphas_cumprod, e.alphas_cumprod)
        sigmas = e.sigmas[:-1].flip(0)  # sigma of training timestep t, ascending in t
        cases.append({
            "config": cfg,
            "betas": f32_list(s.betas),
            "alphas_cumprod": f32_list(s.alphas_cumprod),
            "sigmas": f32_list(sigmas),
        })
    return cases


def ddim_cases():
    cases = []
    variants = [
        {},
        {"steps_offset": 0},
        {"set_alpha_to_one": True},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "linspace"},
    ]
    for over in variants:
        cfg = {**base_config(), **over}
        for steps in STEPS:
            s = DDIMScheduler.from_config(cfg)
            s.set_timesteps(steps)
            ts = [int(t) for t in s.timesteps.tolist()]
            cases.append({
                "config": cfg,
                "steps": steps,
                "timesteps": ts,
                "final_alpha_cumprod": float(s.final_alpha_cumprod),
                "valid": all(0 <= t < s.config.num_train_timesteps for t in ts),
            })
    return cases


def euler_cases():
    cases = []
    variants = [
        {},
        {"timestep_spacing": "leading"},
        {"timestep_spacing": "leading", "steps_offset": 0},
        {"timestep_spacing": "trailing"},
        {"beta_schedule": "linear"},
    ]
    for over in variants:
        cfg = {**base_config(), **over}
        for steps in STEPS:
            e = EulerDiscreteScheduler.from_config(cfg)
            e.set_timesteps(steps)
            assert e.timesteps.dtype == torch.float32 and e.sigmas.dtype == torch.float32
            cases.append({
                "config": cfg,
                "steps": steps,
                "timesteps": f32_list(e.timesteps),
                "sigmas": f32_list(e.sigmas),
                "init_noise_sigma": float(e.init_noise_sigma),
            })
    return cases


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "fixtures", "schedules")
    os.makedirs(out, exist_ok=True)
    for name, cases in (("noise", noise_cases()), ("ddim", ddim_cases()), ("euler", euler_cases())):
        path = os.path.join(out, f"{name}.json")
        with open(path, "w") as f:
            # One case per line: readable diffs without a line per number.
            f.write('{"meta": %s,\n "cases": [\n' % json.dumps(meta()))
            f.write(",\n".join("  " + json.dumps(case) for case in cases))
            f.write("\n]}\n")
        print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
