#!/usr/bin/env python3
"""Re-check the committed reference files against plain, unpatched diffusers.

Usage: check_fixtures.py FIXTURES_DIR

For every fixtures/ref/*.safetensors it rebuilds the run from the file's own metadata and calls
diffusers' pipeline the ordinary way, `generator=torch.Generator("cpu").manual_seed(seed)`, once
with the committed fp16 folder (fixtures/tiny) and once with the committed single file
(fixtures/tiny.safetensors), then prints max |diff| of the image and the final latents.
txt2img files also get init_noise checked against torch.randn. Exit status 1 on any mismatch
beyond TOL.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.dont_write_bytecode = True
TOL = 1e-5
SCHED = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}


def main():
    fx = sys.argv[1]
    import diffusers
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    from PIL import Image
    torch.set_num_threads(1)
    kw = dict(safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    folder = os.path.join(fx, "tiny")
    pipes = {
        "folder": StableDiffusionPipeline.from_pretrained(folder, **kw),
        "single_file": StableDiffusionPipeline.from_single_file(os.path.join(fx, "tiny.safetensors"), config=folder,
                                                                 local_files_only=True, **kw),
    }
    bad = []
    refdir = os.path.join(fx, "ref")
    for name in sorted(os.listdir(refdir)):
        path = os.path.join(refdir, name)
        with safe_open(path, "pt") as f:
            m = json.loads(f.metadata()["reference"])
        ref = load_file(path)
        if m["mode"] == "txt2img":
            g = torch.Generator("cpu").manual_seed(m["seed"])
            d = (torch.randn(m["latent_shape"], generator=g) - ref["init_noise"]).abs().max().item()
            print(f"{name}: init_noise vs torch.randn(seed {m['seed']}): max |diff| {d:.3g}", flush=True)
            if d != 0.0:
                bad.append(name)
        for src, base in pipes.items():
            if m["mode"] == "img2img":
                pipe = StableDiffusionImg2ImgPipeline(**base.components)
                extra = dict(image=Image.open(os.path.join(fx, "images", os.path.basename(m["init_image"])))
                             .convert("RGB"), strength=m["strength"])
            else:
                pipe, extra = base, dict(height=m["height"], width=m["width"])
            pipe.set_progress_bar_config(disable=True)
            pipe.scheduler = getattr(diffusers, SCHED[m["scheduler"]]).from_config(base.scheduler.config)
            lat = {}

            def grab(p, i, t, cb):
                lat["final"] = cb["latents"]
                return cb
            with torch.no_grad():
                img = pipe(m["prompt"], negative_prompt=m["negative"], num_inference_steps=m["steps"],
                           guidance_scale=m["cfg"], generator=torch.Generator("cpu").manual_seed(m["seed"]),
                           output_type="pt", callback_on_step_end=grab, **extra).images
            di = (img - ref["image"]).abs().max().item()
            dl = (lat["final"] - ref["final_latents"]).abs().max().item()
            print(f"{name}: diffusers generator= run from {src}: image max |diff| {di:.3g}, "
                  f"final_latents max |diff| {dl:.3g}", flush=True)
            if not (di <= TOL and dl <= TOL):
                bad.append(f"{name} ({src})")
    if bad:
        sys.exit(f"MISMATCH: {bad}")
    print("all reference files reproduce with plain diffusers")


if __name__ == "__main__":
    main()
