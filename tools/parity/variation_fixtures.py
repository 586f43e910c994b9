#!/usr/bin/env python3
"""Write fixtures for variations, Perlin noise, torch.rand and Lanczos resizing.

Usage: variation_fixtures.py OUT_DIR INIT_PNG

OUT_DIR/noise.safetensors (float32):
  rand_seed{S}_n{N}        torch.rand(N, generator=torch.Generator("cpu").manual_seed(S))
  randn_then_rand          torch.randn(20) then torch.rand(81) from one generator, concatenated
  perlin_seed42_16x24      InvokeAI 2.x's get_perlin_noise for a 16x24 latent (4 channels,
                           rand_perlin_2d as in ldm/util.py), from a fresh seed-42 generator
  noise_seed42_perlin0.3   InvokeAI 2.x's txt2img get_noise(192, 128) with perlin 0.3:
                           randn([1,4,16,24]) then the Perlin noise from the same generator
  invokeai_chain           seed 42's noise, slerped with seed 7 at 0.1 and seed 1234 at 0.25
                           (InvokeAI's -V 7:0.1,1234:0.25), [1,4,8,12]
  invokeai_variation       that chain slerped towards seed 99's noise at 0.3 (then -v 0.3)
  a1111_subseed            A1111's create_random_tensors for seed 42, subseed 7, strength 0.3,
                           shape [4,8,12] (modules/rng.py slerp, over dim 1)
OUT_DIR/lanczos_{W}x{H}.png   INIT_PNG resized by PIL with Image.LANCZOS.
OUT_DIR/circular_conv.safetensors: seamless convolutions, torch.nn.Conv2d with
  padding_mode="circular" (both axes) and InvokeAI's one-axis form (circular F.pad along one
  axis, zeros along the other): x [1,3,7,9], weight [4,3,3,3], bias [4]; out_{xy,x,y}_s{1,2}
  for stride 1 and 2 (padding 1).
"""
import json
import math
import os
import sys

import numpy as np
import PIL
import torch
from PIL import Image
from safetensors.torch import save_file


def generator(seed):
    return torch.Generator("cpu").manual_seed(seed)


# ldm/util.py rand_perlin_2d (InvokeAI 2.3), with the global generator made explicit.
def rand_perlin_2d(shape, res, g, fade=lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3):
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = torch.stack(torch.meshgrid(torch.arange(0, res[0], delta[0]),
                                      torch.arange(0, res[1], delta[1]), indexing="ij"),
                       dim=-1) % 1
    rand_val = torch.rand(res[0] + 1, res[1] + 1, generator=g)
    angles = 2 * math.pi * rand_val
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)

    def tile_grads(slice1, slice2):
        return gradients[slice1[0]:slice1[1], slice2[0]:slice2[1]] \
            .repeat_interleave(d[0], 0).repeat_interleave(d[1], 1)

    def dot(grad, shift):
        return (torch.stack((grid[:shape[0], :shape[1], 0] + shift[0],
                             grid[:shape[0], :shape[1], 1] + shift[1]), dim=-1)
                * grad[:shape[0], :shape[1]]).sum(dim=-1)

    n00 = dot(tile_grads([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile_grads([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile_grads([0, -1], [1, None]), [0, -1])
    n11 = dot(tile_grads([1, None], [1, None]), [-1, -1])
    t = fade(grid[:shape[0], :shape[1]])
    return math.sqrt(2) * torch.lerp(torch.lerp(n00, n10, t[..., 0]),
                                     torch.lerp(n01, n11, t[..., 0]), t[..., 1])


# ldm/invoke/generator/base.py get_perlin_noise: one rand_perlin_2d per latent channel.
def perlin_noise(width, height, g, channels=4):
    return torch.stack([rand_perlin_2d((height, width), (8, 8), g) for _ in range(channels)], dim=0)


# ldm/invoke/generator/txt2img.py get_noise (sizes in pixels).
def get_noise(seed, width, height, perlin=0.0):
    g = generator(seed)
    x = torch.randn([1, 4, height // 8, width // 8], generator=g)
    if perlin > 0.0:
        x = (1 - perlin) * x + perlin * perlin_noise(width // 8, height // 8, g)
    return x


# ldm/invoke/generator/base.py Generator.slerp (numpy, float32 arrays).
def invokeai_slerp(t, v0, v1, DOT_THRESHOLD=0.9995):
    v0 = v0.numpy()
    v1 = v1.numpy()
    dot = np.sum(v0 * v1 / (np.linalg.norm(v0) * np.linalg.norm(v1)))
    if np.abs(dot) > DOT_THRESHOLD:
        v2 = (1 - t) * v0 + t * v1
    else:
        theta_0 = np.arccos(dot)
        sin_theta_0 = np.sin(theta_0)
        theta_t = theta_0 * t
        sin_theta_t = np.sin(theta_t)
        s0 = np.sin(theta_0 - theta_t) / sin_theta_0
        s1 = sin_theta_t / sin_theta_0
        v2 = s0 * v0 + s1 * v1
    return torch.from_numpy(v2)


# modules/rng.py slerp (A1111 1.x).
def a1111_slerp(val, low, high):
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low \
        + (torch.sin(val * omega) / so).unsqueeze(1) * high


def main():
    out_dir, init_png = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for seed in (0, 42):
        for n in (5, 81, 100):
            out[f"rand_seed{seed}_n{n}"] = torch.rand(n, generator=generator(seed))
    g = generator(42)
    out["randn_then_rand"] = torch.cat([torch.randn(20, generator=g), torch.rand(81, generator=g)])
    out["perlin_seed42_16x24"] = perlin_noise(24, 16, generator(42))
    out["noise_seed42_perlin0.3"] = get_noise(42, 192, 128, perlin=0.3)

    chain = get_noise(42, 96, 64)
    for seed, weight in [(7, 0.1), (1234, 0.25)]:
        chain = invokeai_slerp(weight, chain, get_noise(seed, 96, 64))
    out["invokeai_chain"] = chain
    out["invokeai_variation"] = invokeai_slerp(0.3, chain, get_noise(99, 96, 64))

    shape = (4, 8, 12)
    subnoise = torch.randn(shape, generator=generator(7))
    noise = torch.randn(shape, generator=generator(42))
    out["a1111_subseed"] = a1111_slerp(0.3, noise, subnoise)

    meta = {"torch": torch.__version__, "numpy": np.__version__, "pillow": PIL.__version__}
    save_file({k: v.contiguous().float() for k, v in out.items()},
              os.path.join(out_dir, "noise.safetensors"), metadata={"fixtures": json.dumps(meta)})

    torch.manual_seed(0)
    x, weight, bias = torch.randn(1, 3, 7, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    conv = {"x": x, "weight": weight, "bias": bias}
    for stride in (1, 2):
        both = torch.nn.Conv2d(3, 4, 3, stride=stride, padding=1, padding_mode="circular")
        with torch.no_grad():
            both.weight.copy_(weight)
            both.bias.copy_(bias)
            conv[f"out_xy_s{stride}"] = both(x)
        wrap_x = torch.nn.functional.pad(torch.nn.functional.pad(x, (1, 1, 0, 0), mode="circular"),
                                         (0, 0, 1, 1))
        wrap_y = torch.nn.functional.pad(torch.nn.functional.pad(x, (0, 0, 1, 1), mode="circular"),
                                         (1, 1, 0, 0))
        conv[f"out_x_s{stride}"] = torch.nn.functional.conv2d(wrap_x, weight, bias, stride=stride)
        conv[f"out_y_s{stride}"] = torch.nn.functional.conv2d(wrap_y, weight, bias, stride=stride)
    save_file({k: v.contiguous() for k, v in conv.items()},
              os.path.join(out_dir, "circular_conv.safetensors"),
              metadata={"fixtures": json.dumps(meta)})

    image = Image.open(init_png).convert("RGB")
    for size in [(40, 52), (96, 80), (64, 128), (128, 32), (32, 128)]:
        image.resize(size, resample=Image.LANCZOS).save(
            os.path.join(out_dir, f"lanczos_{size[0]}x{size[1]}.png"))
    print(f"wrote {out_dir} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
