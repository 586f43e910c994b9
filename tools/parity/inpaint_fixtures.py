#!/usr/bin/env python3
"""9-channel inpainting fixtures: a tiny inpainting UNet and diffusers' StableDiffusionInpaintPipeline
references computed with it.

Usage: inpaint_fixtures.py --tiny fixtures/tiny --images fixtures/images --out fixtures/inpaint --work DIR

1. ../shared/parity/make_model.py --size tiny --inpaint --seed 0 builds the 9-channel model. Its text
   encoder and VAE are the tiny model's (same seeds); the script checks that, after rounding through
   fp16, they equal the committed fixtures/tiny weights exactly, so only the UNet is stored:
   OUT/unet/ (config.json + fp16 weights). A test assembles the model as fixtures/tiny with OUT/unet.
2. The references run that assembled model in float32 (UNet weights rounded through fp16, i.e. exactly
   the committed fp16 values), with plain diffusers and generator=torch.Generator("cpu").manual_seed(seed):
   prompt "a photograph of an astronaut riding a horse", negative "blurry", CFG 7.5, 64x64, seed 42,
   init image images/init_64x64.png, mask images/mask_64x64.png (white = repaint).
   OUT/ref_{name}.safetensors for each run in RUNS holds:
     final_latents [1,4,8,8]; step.NNN.latents after each step;
     mask [1,1,8,8] and masked_image_latents [1,4,8,8]: the two extra UNet inputs (first CFG half).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

PARITY = os.environ.get("PARITY_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "parity"))
PROMPT = "a photograph of an astronaut riding a horse"
UNET = "unet/diffusion_pytorch_model.safetensors"
# (name, scheduler, strength): strength 1 starts from pure noise and never encodes the init image;
# below 1 the init image's posterior sample is drawn before the noise.
RUNS = [("ddim", "ddim", 1.0), ("euler", "euler", 1.0), ("ddim_s075", "ddim", 0.75)]
STEPS = 10


def rounded(sd):
    return {k: (v.to(torch.float16).to(torch.float32) if v.is_floating_point() else v).contiguous()
            for k, v in sd.items()}


def build_model(a):
    raw = os.path.join(a.work, "tiny_inpaint_raw")
    subprocess.run([sys.executable, os.path.join(PARITY, "make_model.py"), "--size", "tiny", "--inpaint",
                    "--seed", "0", "--out", raw], check=True, stdout=subprocess.DEVNULL)
    for rel in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        ours, committed = rounded(load_file(os.path.join(raw, rel))), load_file(os.path.join(a.tiny, rel))
        if set(ours) != set(committed) or not all(torch.equal(ours[k], committed[k].float()) for k in ours):
            raise RuntimeError(f"{rel} of the inpainting model differs from {a.tiny}")
    unet = rounded(load_file(os.path.join(raw, UNET)))
    os.makedirs(os.path.join(a.out, "unet"), exist_ok=True)
    shutil.copyfile(os.path.join(raw, "unet/config.json"), os.path.join(a.out, "unet/config.json"))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v) for k, v in unet.items()}
    save_file(half, os.path.join(a.out, UNET), metadata={"format": "pt"})
    model = os.path.join(a.work, "tiny_inpaint")
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(a.tiny, model)
    shutil.copyfile(os.path.join(raw, "unet/config.json"), os.path.join(model, "unet/config.json"))
    save_file(unet, os.path.join(model, UNET), metadata={"format": "pt"})
    return model


def run(pipe, a, scheduler, strength):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    from PIL import Image
    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}[scheduler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    out = {}
    original = pipe.prepare_mask_latents

    def prepare_mask_latents(*args, **kw):
        mask, masked = original(*args, **kw)
        out["mask"], out["masked_image_latents"] = mask[:1].clone(), masked[:1].clone()
        return mask, masked

    pipe.prepare_mask_latents = prepare_mask_latents

    def on_step_end(p, i, t, kw):
        out[f"step.{i:03d}.latents"] = kw["latents"].clone()
        return kw

    with torch.no_grad():
        latents = pipe(PROMPT, negative_prompt="blurry", image=Image.open(os.path.join(a.images, "init_64x64.png")).convert("RGB"),
                       mask_image=Image.open(os.path.join(a.images, "mask_64x64.png")).convert("L"),
                       height=64, width=64, strength=strength, num_inference_steps=STEPS, guidance_scale=7.5,
                       generator=torch.Generator("cpu").manual_seed(42), output_type="latent",
                       callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"]).images
    out["final_latents"] = latents
    return {k: v.contiguous() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = build_model(a)
    from diffusers import StableDiffusionInpaintPipeline
    pipe = StableDiffusionInpaintPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False,
                                                          torch_dtype=torch.float32)
    assert pipe.unet.config.in_channels == 9
    for name, scheduler, strength in RUNS:
        tensors = run(pipe, a, scheduler, strength)
        meta = {"scheduler": scheduler, "strength": strength, "steps": STEPS, "seed": 42, "prompt": PROMPT,
                "negative": "blurry", "cfg": 7.5, "size": [64, 64]}
        save_file(tensors, os.path.join(a.out, f"ref_{name}.safetensors"), metadata={"reference": json.dumps(meta)})
        print(f"{name}: {len(tensors)} tensors, final std {tensors['final_latents'].std():.3f}", flush=True)


if __name__ == "__main__":
    main()
