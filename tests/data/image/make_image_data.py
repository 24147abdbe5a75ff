"""Makes the Pillow reference data of tests/test_image.cpp (run from this folder with a Python
that has Pillow; Debian: python3-pil). Committed outputs:
- noise_61x47.png: deterministic RGB noise (stresses the clipping between resize passes).
- resize_<src>_to_<W>x<H>.png: Pillow Image.resize((W, H), BICUBIC) of a source image.
- mode_<mode>.png + mode_<mode>_rgb.png: an image stored in a non-RGB mode and Pillow's
  convert("RGB") of it.
"""
import random

from PIL import Image

rng = random.Random(1234)
noise = Image.new("RGB", (61, 47))
noise.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(61 * 47)])
noise.save("noise_61x47.png")

sources = {
    "noise": noise,
    "frame": Image.open("../../fixtures/tiny-video-4raw/inputs/frame00_256x128.png").convert("RGB"),
    "photo": Image.open("../../fixtures/tiny-image/inputs/image0_80x56.png").convert("RGB"),
}
cases = {
    "noise": [(23, 19), (150, 90), (61, 13), (7, 47), (5, 3), (200, 1)],
    "frame": [(100, 37), (64, 64), (300, 50), (256, 61), (97, 128), (301, 163)],
    "photo": [(33, 200), (320, 224), (161, 111)],
}
for name, sizes in cases.items():
    for w, h in sizes:
        sources[name].resize((w, h), Image.BICUBIC).save(f"resize_{name}_to_{w}x{h}.png")

small = noise.crop((0, 0, 9, 7))
grey = small.convert("L")
alpha = Image.new("L", small.size)
alpha.putdata([rng.randrange(256) for _ in range(9 * 7)])
la = Image.merge("LA", (grey, alpha))
rgba = Image.merge("RGBA", (*small.split(), alpha))
pal = small.convert("P", palette=Image.ADAPTIVE, colors=16)
pal.info["transparency"] = 3
for mode, im in {"L": grey, "LA": la, "RGBA": rgba, "P": pal}.items():
    im.save(f"mode_{mode}.png")
    Image.open(f"mode_{mode}.png").convert("RGB").save(f"mode_{mode}_rgb.png")
