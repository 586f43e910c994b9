#!/usr/bin/env python3
"""Write a grey mask resized as A1111 resizes inpainting masks (Pillow, L mode, LANCZOS).

Usage: mask_resize_fixtures.py MASK_PNG OUT_DIR

OUT_DIR/mask_lanczos_{W}x{H}.png   MASK_PNG converted to L and resized with Image.LANCZOS
                                   (A1111's images.resize_image for an L image), at a shrink,
                                   an enlargement and one axis each way.
"""
import os
import sys

from PIL import Image


def main():
    mask_png, out_dir = sys.argv[1:3]
    os.makedirs(out_dir, exist_ok=True)
    mask = Image.open(mask_png).convert("L")
    for size in [(40, 52), (96, 80), (128, 32)]:
        mask.resize(size, resample=Image.LANCZOS).save(
            os.path.join(out_dir, f"mask_lanczos_{size[0]}x{size[1]}.png"))


if __name__ == "__main__":
    main()
