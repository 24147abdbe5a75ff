"""What the Python tests share: the tiny-video-4raw fixture's model folder (with its toy
tokenizer as tokenizer.json), the tiny-image picture, and deepstack-caption's greedy text to
compare with. That model's greedy replies change with the picture (the image fixtures' models
repeat one token whatever they see), so equal texts show that the same pixels went in."""

import json
import os
import subprocess

TEST_DATA = os.environ["DEEPSTACK_TEST_DATA"]  # the repository's tests/ folder
BIN_DIR = os.environ["DEEPSTACK_BIN_DIR"]  # the build's bin/, with deepstack-caption
MODEL = os.path.join(TEST_DATA, "fixtures", "tiny-video-4raw", "model")
IMAGE = os.path.join(TEST_DATA, "fixtures", "tiny-image", "inputs", "image0_80x56.png")
FRAMES = os.path.join(TEST_DATA, "fixtures", "tiny-video-4raw", "inputs")  # a folder of 4 frames
PROMPT = "Describe this image."


def cli_caption(image, max_new_tokens, prompt=PROMPT):
    """deepstack-caption's greedy reply for one image (or, with image=["--video", PATH], a video)."""
    inputs = image if isinstance(image, list) else [image]
    out = subprocess.run([os.path.join(BIN_DIR, "deepstack-caption"), "--model", MODEL, "--prompt", prompt, "--temperature", "0",
                          "--max-new-tokens", str(max_new_tokens), "--threads", "1", "--json", *inputs],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["text"]
