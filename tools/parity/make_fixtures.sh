#!/usr/bin/env bash
# Regenerate every file under fixtures/ from the parity harness in ../shared/parity.
#
# Usage: tools/parity/make_fixtures.sh
#   PY=python        the parity venv's python (default /tmp/sdref-venv/bin/python; see
#                    ../shared/parity/setup.sh)
#   PARITY_DIR=dir   the harness (default: ../shared/parity relative to the repository root)
#   WORK=dir         scratch space for the fp32 models and PNGs (default: a new temp dir)
# On the same torch/diffusers versions the outputs are byte-identical to the committed ones;
# `git status fixtures` after a run shows whether anything changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PARITY_DIR=${PARITY_DIR:-$(cd "$ROOT/../shared/parity" && pwd)}
PY=${PY:-/tmp/sdref-venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
TOOLS=$ROOT/tools/parity
FX=fixtures
cd "$ROOT"
mkdir -p "$WORK" $FX/ref $FX/images $FX/rng $FX/tokenizer

# 1-2. Tiny model: fp32 random weights, then rounded through fp16 (fp32 copy for the reference
#      runs, fp16 folder + single file + ckpt committed; all verified tensor-identical).
"$PY" "$PARITY_DIR/make_model.py" --size tiny --out "$WORK/tiny_fp32" --seed 0 >"$WORK/make_model.log"
rm -rf $FX/tiny
"$PY" "$TOOLS/round_model.py" --src "$WORK/tiny_fp32" --out-fp32 "$WORK/tiny" --out-fp16 $FX/tiny \
    --single-file $FX/tiny.safetensors --ckpt $FX/tiny.ckpt

# 2b. Tiny SDXL pipeline (two text encoders, text_time UNet), fp16 weights rounded as tiny/'s.
"$PY" "$TOOLS/make_tiny_sdxl.py" $FX/tiny-sdxl --tokenizer $FX/tiny/tokenizer >"$WORK/make_tiny_sdxl.log"
# 2c. The same SDXL model as one original-layout (sgm/A1111) file, verified with diffusers.
"$PY" "$TOOLS/make_sdxl_single_file.py" $FX/tiny-sdxl $FX/tiny-sdxl.safetensors >"$WORK/make_sdxl_single_file.log"
# 2d. A tiny SD 2.x 768-v model (OpenCLIP-style encoder padding with "!", v_prediction), its
#     single file (verified with diffusers) and StableDiffusionPipeline references on it.
"$PY" "$TOOLS/make_tiny_sd2v.py" --tokenizer $FX/tiny/tokenizer --folder $FX/tiny-sd2v \
    --single-file $FX/tiny-sd2v.safetensors --refs $FX/sd2v >"$WORK/make_tiny_sd2v.log"

# SDXL's networks (both text encoders, the text_time UNet) on the tiny SDXL model.
mkdir -p $FX/sdxl
"$PY" "$TOOLS/sdxl_network_fixtures.py" $FX/tiny-sdxl $FX/sdxl/networks.safetensors

# 3. Malicious pickles for the pickle guard (never loaded).
"$PY" "$TOOLS/make_hostile.py" $FX

# 4. References, diffusers' torch.Generator("cpu") seed path, from the rounded fp32 model.
"$PY" "$PARITY_DIR/make_test_images.py" $FX/images --width 64 --height 64
REF=("$PY" "$TOOLS/reference_torch_seed.py" --model "$WORK/tiny" --model-label "fixtures/tiny"
     --prompt "a photograph of an astronaut riding a horse" --steps 20 --cfg 7.5 --unet-io first)
"${REF[@]}" --negative "blurry" --seed 42 --width 64 --height 64 --scheduler ddim,euler \
    --out "$FX/ref/txt2img_{scheduler}.safetensors" --png "$WORK/txt2img_{scheduler}.png"
"${REF[@]}" --negative "blurry" --seed 42 --width 64 --height 64 --scheduler ddim \
    --init-image $FX/images/init_64x64.png --strength 0.6 \
    --out $FX/ref/img2img_ddim.safetensors --png "$WORK/img2img_ddim.png"
"${REF[@]}" --negative "blurry" --seed 42 --width 64 --height 64 --scheduler unipc \
    --init-image $FX/images/init_64x64.png --strength 0.6 \
    --out $FX/ref/img2img_unipc.safetensors --png "$WORK/img2img_unipc.png"
"${REF[@]}" --negative "blurry" --seed 42 --width 64 --height 64 --scheduler lcm \
    --init-image $FX/images/init_64x64.png --strength 0.6 \
    --out $FX/ref/img2img_lcm.safetensors --png "$WORK/img2img_lcm.png"
"${REF[@]}" --negative "" --seed 1234 --width 64 --height 48 --scheduler euler \
    --out $FX/ref/txt2img_euler_64x48.safetensors --png "$WORK/txt2img_euler_64x48.png"

# 4b. SDXL pipeline references: diffusers' StableDiffusionXLPipeline (Euler, DDIM with the zero
#     negative, an A1111-weighted prompt) and its img2img pipeline on the tiny SDXL model.
mkdir -p $FX/sdxl_pipeline
"$PY" "$TOOLS/sdxl_pipeline_fixtures.py" --model $FX/tiny-sdxl --init $FX/images/init_64x64.png \
    --out $FX/sdxl_pipeline >"$WORK/sdxl_pipeline.log"

# 4c. The tiny SDXL refiner (folder and sgm single file) and its references: img2img on the
#     refiner, and tiny-sdxl -> refiner with denoising_end/denoising_start.
"$PY" "$TOOLS/make_tiny_refiner.py" --base $FX/tiny-sdxl --init $FX/images/init_64x64.png \
    --out $FX/tiny-sdxl-refiner --single $FX/tiny-sdxl-refiner.safetensors \
    --refs $FX/sdxl_refiner >"$WORK/make_tiny_refiner.log"

# 5-6. torch CPU randn values and CLIP tokenizer ids.
"$PY" "$TOOLS/make_rng.py" $FX/rng/torch_randn.safetensors
"$PY" "$TOOLS/make_tokenizer_cases.py" $FX/tiny/tokenizer $FX/tokenizer/cases.json

# 7. Every sampler's final latents (k-diffusion 0.1.1 and diffusers' schedulers); needs
#    `$PY -m pip install k-diffusion==0.1.1.post1 torchdiffeq==0.2.5 --no-deps` in the venv.
mkdir -p $FX/samplers
"$PY" "$TOOLS/sampler_fixtures.py" $FX/samplers/tiny_10steps.safetensors >"$WORK/samplers.log"

# 8. Noise schedules and sigma schedules (diffusers; k-diffusion, and ComfyUI's/A1111's schedule
#    functions as written out in the script).
"$PY" "$TOOLS/schedule_fixtures.py" $FX/schedules
"$PY" "$TOOLS/sigma_fixtures.py" $FX/schedules/sigmas.json

# 9. An SD 2.x-style UNet config (linear projection, per-block heads, deeper transformers).
"$PY" "$TOOLS/make_unet_sd2_style.py" $FX/unet_sd2_style

# 10. Prompt language: A1111's own parser and embedder (from a stable-diffusion-webui checkout
#     given as WEBUI; `lark` in the venv) and compel 2.5.1.
if [ -n "${WEBUI:-}" ]; then
    "$PY" "$TOOLS/prompt_fixtures.py" --webui "$WEBUI" --model $FX/tiny --out $FX/prompt
else
    echo "WEBUI not set: fixtures/prompt left as they are" >&2
fi
"$PY" "$TOOLS/compel_fixtures.py" --model $FX/tiny --out $FX/prompt
"$PY" "$TOOLS/pad_fixtures.py" --model $FX/tiny --out $FX/prompt

# 11. Variations (InvokeAI's and A1111's slerps), Perlin noise, torch.rand, Pillow's Lanczos.
"$PY" "$TOOLS/variation_fixtures.py" $FX/variations $FX/images/init_64x64.png
"$PY" "$TOOLS/mask_resize_fixtures.py" $FX/images/mask_64x64.png $FX/images

# 11. A 9-channel inpainting UNet and diffusers' inpaint pipeline references.
mkdir -p $FX/inpaint
"$PY" "$TOOLS/inpaint_fixtures.py" --tiny $FX/tiny --images $FX/images --out $FX/inpaint --work "$WORK"

# VAE tiling: diffusers' tiled decode/encode with the tiny VAE and 32-pixel tiles.
mkdir -p $FX/vae_tiling
"$PY" "$TOOLS/vae_tiling_fixtures.py" $FX/tiny/vae $FX/vae_tiling/tiny_32px_tiles.safetensors

# TAESD: a tiny random AutoencoderTiny, its decoder in madebyollin's layout, and a decode.
"$PY" "$TOOLS/taesd_fixtures.py" $FX/taesd

# Every reference must reproduce with plain diffusers (generator=), from the folder and the single file.
"$PY" "$TOOLS/check_fixtures.py" $FX
du -sh $FX
