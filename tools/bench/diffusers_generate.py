#!/usr/bin/env python3
"""One whole txt2img generation with diffusers' StableDiffusionPipeline on the CPU, f32: the
reference for `dream`'s peak memory (run both under `/usr/bin/time -v`, see compare.sh).

  python diffusers_generate.py MODEL_DIR [--steps 4] [--size 512] [--threads 2]
"""
import argparse

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = StableDiffusionPipeline.from_pretrained(
        a.model, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    # k_euler, as `dream -A k_euler`.
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with torch.inference_mode():
        image = pipe(
            "a cat",
            num_inference_steps=a.steps,
            height=a.size,
            width=a.size,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(1),
        ).images[0]
    print(f"image {image.size}")


if __name__ == "__main__":
    main()
