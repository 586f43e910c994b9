#!/usr/bin/env python3
"""diffusers' side of `dream bench --model sdxl`: SDXL base 1.0's networks built with random
weights from the configs Dream's `--json` output carries, timed on the same shapes, f32.

  tools/bench/diffusers_sdxl.py DREAM_JSON [--sizes 1024] [--iters 3] [--threads 2] [--json OUT]

Times, each after one untimed warm-up run, under torch.inference_mode():
  * text_encoder (transformers CLIPTextModel) and text_encoder_2 (CLIPTextModelWithProjection) on
    the CFG pair of prompts, token ids [2, 77], with output_hidden_states as the SDXL pipeline
    asks (it conditions on the penultimate layer and encoder 2's pooled projection);
  * one UNet2DConditionModel forward at batch 1 and 2: sample [B, 4, size/8, size/8], timestep
    500, encoder_hidden_states [B, 77, 2048], added_cond_kwargs text_embeds [B, 1280] and time_ids
    [B, 6] = (size, size, 0, 0, size, size) each;
  * AutoencoderKL decode of [1, 4, size/8, size/8] and encode of [1, 3, size, size], and
    AutoencoderTiny's decoder (TAESD's shape, which TAESDXL shares).
Rows carry Dream's component names and input shapes so that compare.py can pair them; the
process's peak RSS is printed and written too. Networks are built one at a time, like Dream's.
"""
import argparse
import gc
import json
import resource
import statistics
import time

import numpy as np
import torch


def median_seconds(fn, iters):
    """Median wall-clock seconds of `iters` calls of fn after one warm-up call, and the runs."""
    with torch.inference_mode():
        fn()
        runs = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dream_json", help="the --json file of `dream bench --model sdxl`")
    ap.add_argument("--sizes", default="1024")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with open(a.dream_json) as f:
        dream = json.load(f)
    if dream.get("model") != "sdxl":
        raise SystemExit(f"{a.dream_json} is not from `dream bench --model sdxl`")
    configs = dream["configs"]
    sizes = [int(s) for s in a.sizes.split(",")]
    rng = np.random.default_rng(0)
    rows = []

    def time_row(component, shape, fn):
        median, runs = median_seconds(fn, a.iters)
        rows.append(dict(component=component, input=list(shape), median_s=median, runs=runs))
        print(f"  {component:<15} {str(list(shape)):<20} median {median:.3f}s  runs "
              f"{[round(r, 3) for r in runs]}  peak RSS {peak_rss_bytes() / 2**30:.2f} GiB", flush=True)

    def randn(*shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    for name, model_class in (("text_encoder", CLIPTextModel),
                              ("text_encoder_2", CLIPTextModelWithProjection)):
        encoder = model_class(CLIPTextConfig(**configs[name])).eval()
        ids = torch.arange(2 * 77).reshape(2, 77) * 7919 % configs[name]["vocab_size"]
        time_row(name, ids.shape, lambda: encoder(ids, output_hidden_states=True))
        del encoder
        gc.collect()

    unet = UNet2DConditionModel.from_config(configs["unet"]).eval()
    print(f"# unet: {sum(p.numel() for p in unet.parameters()):,} parameters", flush=True)
    pooled = (unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim)
    for size in sizes:
        for batch in (1, 2):
            sample = randn(batch, unet.config.in_channels, size // 8, size // 8)
            context = randn(batch, 77, unet.config.cross_attention_dim)
            added = {"text_embeds": randn(batch, pooled),
                     "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32)}
            time_row("unet", sample.shape,
                     lambda: unet(sample, 500, encoder_hidden_states=context, added_cond_kwargs=added))
    del unet
    gc.collect()

    vae = AutoencoderKL.from_config(configs["vae"]).eval()
    taesd = AutoencoderTiny().eval()
    for size in sizes:
        latents = randn(1, vae.config.latent_channels, size // 8, size // 8)
        image = randn(1, 3, size, size).clamp(-1, 1)
        time_row("vae_decode", latents.shape, lambda: vae.decode(latents))
        time_row("vae_encode", image.shape, lambda: vae.encode(image))
        time_row("taesd_decode", latents.shape, lambda: taesd.decode(latents))

    peak = peak_rss_bytes()
    print(f"# peak RSS {peak / 2**30:.2f} GiB; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"timings": rows, "peak_rss_bytes": peak}, f, indent=2)


if __name__ == "__main__":
    main()
