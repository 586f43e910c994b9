#!/usr/bin/env python3
"""Final latents of every sampler on the tiny model, 10 steps: fixtures/samplers/tiny_10steps.safetensors

Usage: sampler_fixtures.py OUT.safetensors      (run with the parity venv's python, plus
       `pip install k-diffusion==0.1.1.post1 torchdiffeq==0.2.5 --no-deps`)

Setting, the same as fixtures/ref: fixtures/tiny loaded in float32, prompt "a photograph of an
astronaut riding a horse", negative "blurry", CFG 7.5 on the noise prediction (UNet batch
[negative, positive]), 64x64 (latents [1,4,8,8]), seed 42:
  g = torch.Generator("cpu").manual_seed(42); init_noise = torch.randn((1,4,8,8), generator=g)

k-diffusion samplers (the k-diffusion PyPI package, k_diffusion.sampling.sample_*):
  the CFG UNet wrapped as k_diffusion.external.DiscreteEpsDDPMDenoiser (DiscreteVDDPMDenoiser
  for the "v" cases: the same network read as a v-prediction model), alphas_cumprod from the
  model's scheduler config, quantize=False; x = init_noise * sigmas[0]; schedules
  "normal" = denoiser.get_sigmas(10) and "karras" = get_sigmas_karras(10, sigma_min, sigma_max)
  over the model's sigma range. Ancestral samplers draw their step noise with
  torch.randn(x.shape, generator=g), continuing the generator that drew init_noise. SDE samplers
  use k-diffusion's BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=42); every value it
  returns is recorded, in call order, so a test can replay it.
Discrete-timestep samplers (diffusers schedulers from the model's scheduler config, the
  pipeline's loop: scale_model_input, CFG UNet, step(..., generator=g)): ddim (eta 0 and 1, and
  clip_sample=True, as DDPM and LCM), plms
  (PNDM, skip_prk_steps), unipc (UniPCMultistep defaults; also use_karras_sigmas, and the
  solver_order / solver_type / predict_x0 / lower_order_final variants), lcm (also
  original_inference_steps=30), ddpm.
Guidance extras, eps model only: CFG rescale phi=0.7 (diffusers' rescale_noise_cfg on the guided
  output) with k-diffusion Euler and with diffusers' DDIM; InvokeAI 2.3's --threshold 1.5 (its
  CFGDenoiser warmup and cfg_apply_threshold, transcribed below) around the guided denoiser with
  Euler (Karras) and Heun (normal); A1111's discard_next_to_last_sigma with DPM2 Karras.

Tensors, per case NAME = "{prediction}.{sampler}.{schedule}" (prediction "eps" or "v"):
  init_noise                  [1,4,8,8]
  sigmas.normal, sigmas.karras f32 [11] the k-diffusion schedules
  timesteps.normal, timesteps.karras f32 [10] k-diffusion's sigma_to_t of each sigma but the last
  NAME.latents                [1,4,8,8] final latents
  NAME.sigmas                 f32 [11]  UniPC: the sigmas walked
  NAME.latents_before_last    [1,4,8,8] UniPC: the latents before the last step
  NAME.timesteps              f64       discrete samplers: the UNet timesteps, in order
  NAME.noise                  [k,1,4,8,8] SDE samplers: the Brownian noise, in call order
  eps.rescale.{euler,ddim}.normal, eps.threshold.{euler.karras,heun.normal},
  eps.discard.dpm_2.karras    .latents of the guidance extras (.sigmas: the discarded schedule)
  batch.euler_ancestral.normal.latents [3,4,8,8] seeds 42, 43, 44 sampled as one batch (UNet
                              batch 6), each image's step noise from its own generator
"""
import importlib
import inspect
import json
import os
import sys
import types

import diffusers
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "..", "fixtures", "tiny")
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry"
SEED = 42
CFG = 7.5
STEPS = 10
LATENT_SHAPE = (1, 4, 8, 8)

# name: (k_diffusion.sampling function, where its step noise comes from)
K_SAMPLERS = {
    "euler": ("sample_euler", None),
    "euler_ancestral": ("sample_euler_ancestral", "generator"),
    "heun": ("sample_heun", None),
    "dpm_2": ("sample_dpm_2", None),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", "generator"),
    "lms": ("sample_lms", None),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", "generator"),
    "dpmpp_sde": ("sample_dpmpp_sde", "brownian"),
    "dpmpp_2m": ("sample_dpmpp_2m", None),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", "brownian"),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", "brownian"),
}

# name: (diffusers scheduler class, from_config overrides, step() arguments)
DISCRETE = {
    "ddim.normal": ("DDIMScheduler", {}, {}),
    "ddim_eta1.normal": ("DDIMScheduler", {}, {"eta": 1.0}),
    "ddim_clip.normal": ("DDIMScheduler", {"clip_sample": True}, {}),
    "ddpm_clip.normal": ("DDPMScheduler", {"clip_sample": True}, {}),
    "lcm_clip.normal": ("LCMScheduler", {"clip_sample": True}, {}),
    "plms.normal": ("PNDMScheduler", {"skip_prk_steps": True}, {}),
    "unipc.normal": ("UniPCMultistepScheduler", {}, {}),
    "unipc.karras": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}, {}),
    "unipc_order1.normal": ("UniPCMultistepScheduler", {"solver_order": 1}, {}),
    "unipc_order3.normal": ("UniPCMultistepScheduler", {"solver_order": 3}, {}),
    "unipc_bh1.normal": ("UniPCMultistepScheduler", {"solver_type": "bh1"}, {}),
    "unipc_bh1_order3.normal": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}, {}),
    "unipc_noise.normal": ("UniPCMultistepScheduler", {"predict_x0": False}, {}),
    "lcm.normal": ("LCMScheduler", {}, {}),
    "lcm_original30.normal": ("LCMScheduler", {"original_inference_steps": 30}, {}),
    "ddpm.normal": ("DDPMScheduler", {}, {}),
}


def import_k_diffusion():
    """k_diffusion/__init__.py imports its training code (torchvision, scikit-image, CLIP);
    the samplers need only sampling.py and external.py, whose one use of k_diffusion.utils
    is append_dims. Load those two modules under a bare package."""
    spec = importlib.util.find_spec("k_diffusion")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, ndim: x[(...,) + (None,) * (ndim - x.ndim)]
    sys.modules["k_diffusion"] = package
    sys.modules["k_diffusion.utils"] = utils
    package.utils = utils
    sampling = importlib.import_module("k_diffusion.sampling")
    external = importlib.import_module("k_diffusion.external")
    return sampling, external


# Guidance extras, on the eps model: CFG rescale phi, InvokeAI's --threshold.
RESCALE = 0.7
THRESHOLD = 1.5


def cfg_apply_threshold(result, threshold, scale=0.7):
    """InvokeAI 2.3's cfg_apply_threshold (ldm/models/diffusion/ksampler.py), transcribed."""
    if threshold <= 0.0:
        return result
    maxval = 0.0 + torch.max(result).cpu().numpy()
    minval = 0.0 + torch.min(result).cpu().numpy()
    if maxval < threshold and minval > -threshold:
        return result
    if maxval > threshold:
        maxval = min(max(1, scale * maxval), threshold)
    if minval < -threshold:
        minval = max(min(-1, scale * minval), -threshold)
    return torch.clamp(result, min=minval, max=maxval)


class InvokeAIThreshold:
    """InvokeAI 2.3's CFGDenoiser threshold and warmup around a (guided) k-diffusion denoiser,
    as KSampler.sample sets it up for S steps: warmup=max(0.8*S, S-10)."""

    def __init__(self, denoiser, threshold, steps):
        self.denoiser, self.threshold = denoiser, threshold
        self.warmup_max = max(0.8 * steps, steps - 10)
        self.warmup = max(self.warmup_max / 10, 1)

    def __call__(self, x, sigma, **kwargs):
        result = self.denoiser(x, sigma, **kwargs)
        if self.warmup < self.warmup_max:
            thresh = max(1, 1 + (self.threshold - 1) * (self.warmup / self.warmup_max))
            self.warmup += 1
        else:
            thresh = self.threshold
        if thresh > self.threshold:
            thresh = self.threshold
        return cfg_apply_threshold(result, thresh)


def generator(seed=SEED):
    """The image's generator, after it drew the initial noise."""
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(LATENT_SHAPE, generator=g)
    return g, noise


class Recorder:
    """Wraps a noise sampler and keeps what it returns."""

    def __init__(self, inner):
        self.inner, self.draws = inner, []

    def __call__(self, sigma, sigma_next):
        noise = self.inner(sigma, sigma_next)
        self.draws.append(noise.detach().clone())
        return noise


def main():
    out = sys.argv[1]
    torch.set_num_threads(1)
    sampling, external = import_k_diffusion()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        MODEL, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True, negative_prompt=NEGATIVE)

    def guided(x, t, rescale=0.0):
        """The UNet's output (eps or v) with classifier-free guidance, for a batch of images;
        with rescale > 0, CFG-rescaled by diffusers' rescale_noise_cfg as its pipelines do."""
        n = x.shape[0]
        context = torch.cat([negative.expand(n, -1, -1), positive.expand(n, -1, -1)])
        t = torch.as_tensor(t).reshape(-1).expand(n).repeat(2)
        uncond, cond = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
        output = uncond + CFG * (cond - uncond)
        if rescale > 0:
            output = rescale_noise_cfg(output, cond, guidance_rescale=rescale)
        return output

    tensors = {"init_noise": generator()[1]}
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    denoisers = {
        "eps": external.DiscreteEpsDDPMDenoiser(lambda x, t: guided(x, t), alphas_cumprod, quantize=False),
        "v": external.DiscreteVDDPMDenoiser(lambda x, t: guided(x, t), alphas_cumprod, quantize=False),
    }
    eps = denoisers["eps"]
    schedules = {
        "normal": eps.get_sigmas(STEPS),
        "karras": sampling.get_sigmas_karras(STEPS, eps.sigma_min.item(), eps.sigma_max.item()),
    }
    for schedule, sigmas in schedules.items():
        tensors[f"sigmas.{schedule}"] = sigmas.float()
        tensors[f"timesteps.{schedule}"] = eps.sigma_to_t(sigmas[:-1]).float()
    summary = {}
    for prediction, denoiser in denoisers.items():
        for name, (function, noise) in K_SAMPLERS.items():
            for schedule, sigmas in schedules.items():
                case = f"{prediction}.{name}.{schedule}"
                g, init_noise = generator()
                x = init_noise * sigmas[0]
                kwargs = {}
                if noise == "generator":
                    kwargs["noise_sampler"] = lambda sigma, sigma_next: torch.randn(x.shape, generator=g)
                elif noise == "brownian":
                    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
                    recorder = Recorder(sampling.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=SEED))
                    kwargs["noise_sampler"] = recorder
                with torch.no_grad():
                    latents = getattr(sampling, function)(denoiser, x, sigmas, disable=True, **kwargs)
                tensors[f"{case}.latents"] = latents
                if noise == "brownian":
                    tensors[f"{case}.noise"] = torch.stack(recorder.draws)
                summary[case] = round(latents.abs().max().item(), 4)

        prediction_type = {"eps": "epsilon", "v": "v_prediction"}[prediction]
        for case_name, (cls_name, overrides, step_args) in DISCRETE.items():
            case = f"{prediction}.{case_name}"
            scheduler = getattr(diffusers, cls_name).from_config(
                pipe.scheduler.config, prediction_type=prediction_type, **overrides)
            scheduler.set_timesteps(STEPS)
            g, init_noise = generator()
            x = init_noise * scheduler.init_noise_sigma
            takes_generator = "generator" in inspect.signature(scheduler.step).parameters
            with torch.no_grad():
                for t in scheduler.timesteps:
                    before_last = x
                    output = guided(scheduler.scale_model_input(x, t), t)
                    kwargs = {"generator": g} if takes_generator else {}
                    x = scheduler.step(output, t, x, **kwargs, **step_args).prev_sample
            tensors[f"{case}.latents"] = x
            tensors[f"{case}.timesteps"] = scheduler.timesteps.double()
            if cls_name == "UniPCMultistepScheduler":
                tensors[f"{case}.sigmas"] = scheduler.sigmas.float()
                # bh1 and predict_x0=False end in NaN here: their step to sigma 0 multiplies
                # infinities by zero. The latents before that step still compare.
                tensors[f"{case}.latents_before_last"] = before_last
            summary[case] = round(x.abs().max().item(), 4)

    # Guidance extras on the eps model.
    rescaled = external.DiscreteEpsDDPMDenoiser(lambda x, t: guided(x, t, RESCALE), alphas_cumprod, quantize=False)
    extras = {
        # CFG rescale: k-diffusion Euler and diffusers' DDIM loop.
        "rescale.euler.normal": ("sample_euler", rescaled, schedules["normal"]),
        # InvokeAI's --threshold around the guided denoiser (Heun: two model calls a step).
        "threshold.euler.karras": ("sample_euler", InvokeAIThreshold(eps, THRESHOLD, STEPS), schedules["karras"]),
        "threshold.heun.normal": ("sample_heun", InvokeAIThreshold(eps, THRESHOLD, STEPS), schedules["normal"]),
        # A1111's discard_next_to_last_sigma: get_sigmas(steps + 1) less its next-to-last sigma.
        "discard.dpm_2.karras": ("sample_dpm_2", eps, torch.cat([
            sampling.get_sigmas_karras(STEPS + 1, eps.sigma_min.item(), eps.sigma_max.item())[:-2],
            torch.zeros(1)])),
    }
    for case, (function, denoiser, sigmas) in extras.items():
        _, init_noise = generator()
        with torch.no_grad():
            latents = getattr(sampling, function)(denoiser, init_noise * sigmas[0], sigmas, disable=True)
        tensors[f"eps.{case}.latents"] = latents
        summary[f"eps.{case}"] = round(latents.abs().max().item(), 4)
    tensors["eps.discard.dpm_2.karras.sigmas"] = extras["discard.dpm_2.karras"][2].float()
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    _, x = generator()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(guided(x, t, RESCALE), t, x).prev_sample
    tensors["eps.rescale.ddim.normal.latents"] = x
    summary["eps.rescale.ddim.normal"] = round(x.abs().max().item(), 4)

    # A batch of three images, seeds 42, 43, 44, sampled as one tensor, A1111's CPU RNG way:
    # each image's step noise comes from its own generator.
    generators, noises = zip(*(generator(SEED + k) for k in range(3)))
    sigmas = schedules["normal"]
    x = torch.cat(noises) * sigmas[0]
    batch_noise = lambda sigma, sigma_next: torch.cat([torch.randn(LATENT_SHAPE, generator=g) for g in generators])
    with torch.no_grad():
        latents = sampling.sample_euler_ancestral(eps, x, sigmas, disable=True, noise_sampler=batch_noise)
    tensors["batch.euler_ancestral.normal.latents"] = latents
    summary["batch.euler_ancestral.normal"] = round(latents.abs().max().item(), 4)

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {
        "prompt": PROMPT, "negative": NEGATIVE, "seed": SEED, "cfg": CFG, "steps": STEPS,
        "model": "fixtures/tiny", "script": "tools/parity/sampler_fixtures.py",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "k-diffusion": "0.1.1.post1"},
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file(tensors, out, metadata={"reference": json.dumps(metadata)})
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}: {len(tensors)} tensors, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
