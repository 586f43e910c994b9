#!/usr/bin/env python3
"""Build fixtures/tiny-sdxl/: a tiny diffusers StableDiffusionXLPipeline with deterministic random
weights, in the layout of stabilityai/stable-diffusion-xl-base-1.0.

Usage: make_tiny_sdxl.py OUTDIR --tokenizer fixtures/tiny/tokenizer [--seed 0]
       (run with the parity venv's python; ../shared/parity is found as in round_model.py)

What it holds, and why (SDXL's real configs, shrunk):
  unet/           UNet2DConditionModel in SDXL's pattern at tiny size: blocks (32, 64),
                  Down + CrossAttnDown / CrossAttnUp + Up (SDXL has no attention at its top level),
                  2 layers per block, transformer_layers_per_block (1, 2) (SDXL: 1, 2, 10),
                  attention_head_dim (2, 4) (diffusers' name: head COUNTS), linear projections,
                  cross_attention_dim 64 = 32 + 32 (the two encoders' widths concatenated),
                  addition_embed_type "text_time": the pooled text embedding (32) plus the six
                  micro-conditioning numbers each embedded to 8 -> projection input 32 + 6*8 = 80.
  text_encoder/   CLIPTextModel (hidden 32, 4 layers, 4 heads, quick_gelu, the real 49408 vocab),
                  as SDXL's OpenAI ViT-L/14 tower.
  text_encoder_2/ CLIPTextModelWithProjection (hidden 32, 4 layers, 4 heads, exact gelu,
                  projection_dim 32, no-bias text_projection), as SDXL's OpenCLIP bigG tower; its
                  config keeps eos_token_id 2 like SDXL's, so transformers pools at argmax(input_ids).
  tokenizer/      the real CLIP BPE, copied from --tokenizer.
  tokenizer_2/    the same files, padding with "!" (id 0) as SDXL's tokenizer_2 does.
  vae/            the tiny SD VAE architecture (fixtures/tiny/vae) with SDXL's scaling_factor 0.13025
                  and force_upcast true.
  scheduler/      SDXL base 1.0's scheduler_config.json (EulerDiscrete, "leading", steps_offset 1).
  model_index.json  StableDiffusionXLPipeline, force_zeros_for_empty_prompt true.

Weights: torch.manual_seed(seed + k) before each component (k = 0 text_encoder, 1 text_encoder_2,
2 unet, 3 vae), the default init, then ../shared/parity/make_model.py's adjustments (imported, not
copied) so that the random net is a useful numerical test: time-embedding linears x3 and every
attention's q/k rescaled to pre-softmax logits of std 2.5 on fixed calibration inputs. SDXL's
add_embedding (text_time) linears get the same x3 gain so the output depends on the added
conditions. Then every float weight is rounded through float16 and stored float16 (as
fixtures/tiny): two real-vocabulary text encoders alone would be 12.6 MB in float32. The stored
fp16 values are exactly the weights the references (fixtures/sdxl) are computed with.

The script checks that StableDiffusionXLPipeline.from_pretrained(OUTDIR, torch_dtype=float32)
reloads every tensor identically and renders a finite 64x64 image.
"""
import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

PARITY = os.environ.get("PARITY_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "parity"))
sys.dont_write_bytecode = True
sys.path.insert(0, PARITY)

import make_model  # noqa: E402  (the parity harness: calibration and statistics helpers)
from round_model import compare_pipes  # noqa: E402

UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[32, 64], layers_per_block=2, transformer_layers_per_block=[1, 2],
    attention_head_dim=[2, 4], use_linear_projection=True, cross_attention_dim=64,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
    downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=8, norm_eps=1e-5,
)
# SDXL's VAE is SD's architecture; only the latent scale differs (and it overflows in fp16).
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, act_fn="silu",
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 32, 64, 64], layers_per_block=1, norm_num_groups=8,
    sample_size=64, scaling_factor=0.13025, force_upcast=True,
)
_TE = dict(vocab_size=49408, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
           max_position_embeddings=77, layer_norm_eps=1e-5, projection_dim=32, initializer_factor=1.0,
           initializer_range=0.02, attention_dropout=0.0, dropout=0.0,
           bos_token_id=0, eos_token_id=2, pad_token_id=1)  # SDXL's (legacy) special ids, both towers
TEXT_ENCODER = dict(_TE, intermediate_size=64, hidden_act="quick_gelu")
TEXT_ENCODER_2 = dict(_TE, intermediate_size=128, hidden_act="gelu")  # bigG: 4x width, exact GELU
# stabilityai/stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json, key for key.
SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}
# SDXL's default micro-conditioning at 64x64: original size, crop top-left, target size.
TIME_IDS = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]


def write_tokenizer(src, dst, pad_token=None):
    os.makedirs(dst, exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
    if pad_token is not None:
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            p = os.path.join(dst, f)
            with open(p) as fh:
                cfg = json.load(fh)
            cfg["pad_token"] = pad_token
            with open(p, "w") as fh:
                json.dump(cfg, fh, indent=2)


def round_fp16_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def calibration_inputs():
    """make_model's fixed calibration inputs: UNet latents [2,4,8,8], VAE latents [1,4,8,8] and an
    image [1,3,64,64]."""
    return (make_model._rng_t(1234, (2, 4, 8, 8)), make_model._rng_t(1236, (1, 4, 8, 8)),
            make_model._rng_t(1235, (1, 3, 64, 64), 0.5).clamp(-1, 1))


def scale_time_embeddings_(unet):
    """The time embedding's linears (and SDXL's text_time add_embedding's) x3, so that the random
    UNet's output depends on the timestep and the added conditions."""
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if n.startswith(("time_embedding.linear_", "add_embedding.linear_")) and n.endswith(".weight"):
                p.mul_(3.0)


def calibrate_vae(probe, vae, z_cal, img_cal):
    """The VAE's attention logits to std 2.5, decoding and encoding."""
    make_model.calibrate(probe, lambda: vae.decode(z_cal / vae.config.scaling_factor), 2.5)
    make_model.calibrate(probe, lambda: vae.encode(img_cal), 2.5)


def save_fp16(sd, path):
    """A state dict with its float tensors stored float16."""
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_file(sd, path, metadata={"format": "pt"})


def write_scheduler_config(folder, class_name, config):
    """FOLDER/scheduler/scheduler_config.json: `config` key for key, as diffusers writes it."""
    import diffusers
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": class_name, "_diffusers_version": diffusers.__version__, **config}, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True, help="a CLIP tokenizer folder (fixtures/tiny/tokenizer)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    write_tokenizer(a.tokenizer, os.path.join(a.out, "tokenizer"))
    write_tokenizer(a.tokenizer, os.path.join(a.out, "tokenizer_2"), pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(a.out, "tokenizer"))
    tokenizer_2 = CLIPTokenizer.from_pretrained(os.path.join(a.out, "tokenizer_2"))
    assert tokenizer_2.pad_token_id == 0, tokenizer_2.pad_token_id

    torch.manual_seed(a.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)).eval()
    torch.manual_seed(a.seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2)).eval()
    torch.manual_seed(a.seed + 2)
    unet = UNet2DConditionModel(**UNET).eval()
    torch.manual_seed(a.seed + 3)
    vae = AutoencoderKL(**VAE).eval()
    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER)

    prompts = ["a photograph of an astronaut riding a horse", ""]
    tok = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids, ids_2 = tokenizer(prompts, **tok).input_ids, tokenizer_2(prompts, **tok).input_ids
    x_cal, z_cal, img_cal = calibration_inputs()
    time_ids = torch.tensor([TIME_IDS, TIME_IDS])

    def conditioning():
        """SDXL's conditioning: both towers' penultimate hidden states side by side, and tower 2's
        projected pooled output."""
        o1 = text_encoder(ids, output_hidden_states=True)
        o2 = text_encoder_2(ids_2, output_hidden_states=True)
        return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1), o2.text_embeds

    def run_unet(x, t, ctx, pooled, tid):
        return unet(x, t, encoder_hidden_states=ctx,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": tid}).sample

    probe = make_model.AttnProbe()
    probe.add_clip(text_encoder, "text_encoder.")
    probe.add_clip(text_encoder_2, "text_encoder_2.")
    probe.add_diffusers(unet, "unet.")
    probe.add_diffusers(vae, "vae.")
    scale_time_embeddings_(unet)
    make_model.calibrate(probe, lambda: text_encoder(ids), 2.5)
    make_model.calibrate(probe, lambda: text_encoder_2(ids_2), 2.5)
    with torch.no_grad():
        ctx, pooled = conditioning()
    make_model.calibrate(probe, lambda: run_unet(x_cal, 500, ctx, pooled, time_ids), 2.5)
    calibrate_vae(probe, vae, z_cal, img_cal)
    for m in (text_encoder, text_encoder_2, unet, vae):
        round_fp16_(m)

    # What the random net responds to (a net that ignores an input cannot test how it is fed).
    probe.clear()
    with torch.no_grad():
        ctx, pooled = conditioning()
        x = torch.cat([x_cal[:1], x_cal[:1]])
        o = run_unet(x, 500, ctx, pooled, time_ids)
        other_t = run_unet(x, 100, ctx, pooled, time_ids)
        other_ids = run_unet(x, 500, ctx, pooled, torch.tensor([[128.0, 96.0, 16.0, 0.0, 64.0, 64.0]] * 2))
        other_pooled = run_unet(x, 500, ctx, pooled.flip(0), time_ids)
        rel = lambda y: round(((y - o).std() / o.std()).item(), 3)  # noqa: E731
        stats = dict(
            unet_out=make_model.tstats(o),
            rel_sens_prompt_vs_empty=round(((o[0] - o[1]).std() / o.std()).item(), 3),
            rel_sens_t500_vs_t100=rel(other_t), rel_sens_time_ids=rel(other_ids),
            rel_sens_text_embeds=rel(other_pooled),
            text_embeds=make_model.tstats(pooled),
            attention={k: make_model.summarize_attn(probe.records, lambda n, k=k: n.startswith(k + "."))
                       for k in ("text_encoder", "text_encoder_2", "unet")},
        )
    probe.remove()
    print(json.dumps(stats, indent=1), flush=True)

    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(a.out, safe_serialization=True)
    # save_pretrained re-serialises the tokenizers from the live backend (see make_model.py): put
    # back the clean copies.
    for name, pad in (("tokenizer", None), ("tokenizer_2", "!")):
        shutil.rmtree(os.path.join(a.out, name))
        write_tokenizer(a.tokenizer, os.path.join(a.out, name), pad)
    # Keys as on the hub: CLIPTextModelWithProjection already nests text_model.*; the plain
    # CLIPTextModel (transformers >= 5.6) needs the prefix put back. Stored float16.
    live = {"unet": unet.state_dict(), "vae": vae.state_dict(),
            "text_encoder": make_model.te_hub_state_dict(text_encoder), "text_encoder_2": text_encoder_2.state_dict()}
    for comp, fname in WEIGHTS.items():
        save_fp16(live[comp], os.path.join(a.out, comp, fname))
    write_scheduler_config(a.out, "EulerDiscreteScheduler", SCHEDULER)

    # Reload with plain diffusers: every tensor identical, and a finite 64x64 render.
    back = StableDiffusionXLPipeline.from_pretrained(a.out, torch_dtype=torch.float32, local_files_only=True)
    compare_pipes(pipe, back, "reloaded vs built", WEIGHTS)
    if back.scheduler.config.timestep_spacing != "leading" or not back.config.force_zeros_for_empty_prompt:
        raise RuntimeError("scheduler / pipeline config did not survive the reload")
    image = back(prompts[0], negative_prompt="blurry", num_inference_steps=3, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="pt").images
    if image.shape != (1, 3, 64, 64) or not torch.isfinite(image).all():
        raise RuntimeError(f"render failed: {image.shape}")
    print(f"StableDiffusionXLPipeline renders 64x64: mean {image.mean():.4f} std {image.std():.4f}", flush=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.out) for f in fs)
    print(f"wrote {a.out}: {size / 1e6:.1f} MB", flush=True)


if __name__ == "__main__":
    main()
