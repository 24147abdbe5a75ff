"""python3 -m deepstack.batch on a LocalCluster of 2 workers: a folder of good images and a corrupt
one gives one record per image (the good ones with deepstack-caption's text, the corrupt one an
error) and exit status 0; a rerun leaves OUT.jsonl as it was; --retry-errors redoes the error
only; lists and manifests name the images too."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

from fixture import IMAGE, MODEL, cli_caption

TOKENS = 8


def run_batch(*args):
    return subprocess.run([sys.executable, "-m", "deepstack.batch", *args], capture_output=True, text=True, timeout=300)


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class BatchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.TemporaryDirectory(prefix="deepstack_batch_")
        root = cls.scratch.name
        cls.images = os.path.join(root, "images")
        os.makedirs(os.path.join(cls.images, "more"))
        pixels = np.asarray(Image.open(IMAGE).convert("RGB"))
        good = {"a.png": pixels, "b.jpg": pixels[:, ::-1], os.path.join("more", "c.png"): 255 - pixels}
        for name, image in good.items():
            Image.fromarray(np.ascontiguousarray(image)).save(os.path.join(cls.images, name), quality=95)
        with open(os.path.join(cls.images, "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
        with open(os.path.join(cls.images, "notes.txt"), "w") as f:
            f.write("not an image: not listed")
        cls.expected = {os.path.join(cls.images, name): cli_caption(os.path.join(cls.images, name), TOKENS)
                        for name in good}
        cls.broken = os.path.join(cls.images, "broken.png")

    @classmethod
    def tearDownClass(cls):
        cls.scratch.cleanup()

    def batch(self, images, out, *more):
        return run_batch("--model", MODEL, "--images", images, "--out", out, "--workers", "2", "--threads", "1",
                         "--temperature", "0", "--max-new-tokens", str(TOKENS), *more)

    def test_folder_rerun_and_retry(self):
        out = os.path.join(self.scratch.name, "folder.jsonl")
        run = self.batch(self.images, out)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("4/4 images, 1 errors", run.stderr)
        got = {r["image"]: r for r in records(out)}
        self.assertEqual(len(records(out)), 4)
        self.assertEqual(set(got), set(self.expected) | {self.broken})
        self.assertEqual(len(set(self.expected.values())), 3)  # three pictures, three captions
        for image, text in self.expected.items():
            self.assertEqual(got[image]["text"], text, image)
            self.assertGreater(got[image]["prompt_tokens"], 0)
            self.assertGreater(got[image]["generated_tokens"], 0)
            self.assertGreaterEqual(got[image]["seconds"], 0)
            self.assertNotIn("error", got[image])
        self.assertIn(self.broken, got[self.broken]["error"])
        self.assertNotIn("text", got[self.broken])

        with open(out, "rb") as f:
            before = f.read()
        rerun = self.batch(self.images, out)
        self.assertEqual(rerun.returncode, 0, rerun.stderr)
        self.assertIn("4 already in", rerun.stderr)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), before)

        retry = self.batch(self.images, out, "--retry-errors")
        self.assertEqual(retry.returncode, 0, retry.stderr)
        after = records(out)
        self.assertEqual(len(after), 5)
        self.assertEqual(after[-1]["image"], self.broken)
        self.assertIn("error", after[-1])

    def test_list_manifest_and_a_crash_cut_line(self):
        names = sorted(self.expected)
        listing = os.path.join(self.images, "list.txt")
        with open(listing, "w") as f:
            f.write("# two images, the second twice\n" + os.path.relpath(names[0], self.images) + "\n\n" + names[1] + "\n"
                    + names[1] + "\n")
        out = os.path.join(self.scratch.name, "list.jsonl")
        with open(out, "w") as f:  # a record cut short by a crash: ignored, and the next record starts a new line
            f.write('{"image": "' + os.path.relpath(names[0], self.images))
        run = self.batch(listing, out)
        self.assertEqual(run.returncode, 0, run.stderr)
        with open(out, encoding="utf-8") as f:
            cut, *lines = f.read().splitlines()
        self.assertEqual(cut, '{"image": "' + os.path.relpath(names[0], self.images))
        got = {r["image"]: r["text"] for r in map(json.loads, lines)}
        self.assertEqual(len(lines), 2)
        self.assertEqual(got, {os.path.relpath(names[0], self.images): self.expected[names[0]], names[1]: self.expected[names[1]]})

        manifest = os.path.join(self.scratch.name, "manifest.jsonl")
        with open(manifest, "w") as f:
            f.write(json.dumps({"image": names[2]}) + "\n" + json.dumps({"image": names[0], "prompt": "Who?"}) + "\n")
        out = os.path.join(self.scratch.name, "manifest_out.jsonl")
        run = self.batch(manifest, out)
        self.assertEqual(run.returncode, 0, run.stderr)
        got = {r["image"]: r["text"] for r in records(out)}
        self.assertEqual(got[names[2]], self.expected[names[2]])
        self.assertEqual(got[names[0]], cli_caption(names[0], TOKENS, prompt="Who?"))

    def test_a_missing_model_fails_the_job(self):
        out = os.path.join(self.scratch.name, "no_model.jsonl")
        missing = os.path.join(self.scratch.name, "no_such_model")
        run = run_batch("--model", missing, "--images", self.images, "--out", out, "--workers", "1", "--threads", "1")
        self.assertEqual(run.returncode, 1)
        self.assertIn(missing, run.stderr)
        self.assertFalse(os.path.exists(out) and os.path.getsize(out) > 0)


if __name__ == "__main__":
    unittest.main()
