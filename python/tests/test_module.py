"""The deepstack module against deepstack-caption on a fixture model: the image as a path, a PIL
image and a numpy array; streaming; callbacks; errors as exceptions; one Engine on two Python
threads; a chat."""

import os
import pathlib
import tempfile
import threading
import unittest

import numpy as np
from PIL import Image

import deepstack
from fixture import FRAMES, IMAGE, MODEL, PROMPT, cli_caption

TOKENS = 12


class ModuleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.TemporaryDirectory(prefix="deepstack_python_")
        cls.engine = deepstack.Engine(MODEL, threads=1)
        cls.expected = cli_caption(IMAGE, TOKENS)

    @classmethod
    def tearDownClass(cls):
        cls.scratch.cleanup()

    def caption(self, image, **kwargs):
        return self.engine.generate(PROMPT, images=[image], temperature=0, max_new_tokens=TOKENS, **kwargs)

    def test_path_pil_and_numpy_give_the_cli_text(self):
        self.assertTrue(self.expected)
        pil = Image.open(IMAGE)
        for image in (IMAGE, pathlib.Path(IMAGE), pil, np.asarray(pil.convert("RGB"))):
            with self.subTest(image=type(image).__name__):
                reply = self.caption(image)
                self.assertEqual(reply.text, self.expected)
                self.assertEqual(reply.generated_tokens, len(reply.tokens))
                self.assertIn(reply.stop_reason, ("max_tokens", "end_token"))
                self.assertEqual((reply.inputs[0].width, reply.inputs[0].height), (80, 56))
                self.assertGreater(reply.inputs[0].visual_tokens, 0)
                self.assertGreater(reply.prompt_tokens, reply.inputs[0].visual_tokens)
                self.assertGreaterEqual(reply.timings.decode_seconds, 0)
                self.assertEqual(reply.sampling.temperature, 0)

    def test_a_lone_image_and_a_strided_array_are_taken(self):
        pixels = np.asarray(Image.open(IMAGE).convert("RGB"))
        flipped = pixels[:, ::-1]  # negative strides: copied before the engine reads it
        reply = self.engine.generate(PROMPT, images=flipped, temperature=0, max_new_tokens=TOKENS)
        self.assertEqual(reply.text, self.caption(np.ascontiguousarray(flipped)).text)
        self.assertNotEqual(reply.text, self.expected)  # the pixels matter: a mirrored picture reads differently
        self.assertEqual(self.engine.generate(PROMPT, images=IMAGE, temperature=0, max_new_tokens=TOKENS).text, self.expected)

    def test_video_as_a_folder_and_as_frames_gives_the_cli_text(self):
        expected = cli_caption(["--video", FRAMES], TOKENS, prompt="What happens?")
        frames = [Image.open(os.path.join(FRAMES, name)) for name in sorted(os.listdir(FRAMES))]
        for video in (FRAMES, frames, [np.asarray(f.convert("RGB")) for f in frames]):
            with self.subTest(video=type(video).__name__):
                reply = self.engine.generate("What happens?", video=video, system=None, temperature=0, max_new_tokens=TOKENS)
                self.assertEqual(reply.text, expected)
                self.assertTrue(reply.inputs[0].is_video)
                self.assertEqual(reply.inputs[0].frame_indices, [0, 1, 2, 3])

    def test_stream_pieces_join_to_the_text(self):
        stream = self.engine.stream(PROMPT, images=[IMAGE], temperature=0, max_new_tokens=TOKENS)
        pieces = []
        while True:
            try:
                pieces.append(next(stream))
            except StopIteration as done:
                reply = done.value
                break
        self.assertGreater(len(pieces), 1)
        self.assertEqual("".join(pieces), self.expected)
        self.assertEqual(reply.text, self.expected)

    def test_stream_closed_early_stops_the_reply(self):
        stream = self.engine.stream(PROMPT, images=[IMAGE], temperature=0, max_new_tokens=TOKENS)
        first = next(stream)
        stream.close()
        self.assertTrue(self.expected.startswith(first))

    def test_callbacks(self):
        pieces, stages = [], []
        reply = self.caption(IMAGE, on_text=lambda piece: pieces.append(piece) or len(pieces) < 3,
                             on_progress=lambda stage, so_far: stages.append(stage))
        self.assertEqual(len(pieces), 3)
        self.assertEqual(reply.stop_reason, "callback")
        self.assertEqual(reply.text, "".join(pieces))
        self.assertEqual(stages, ["preprocess", "vision", "prefill", "decode"])

        def fails(piece):
            raise KeyError("from the callback")

        with self.assertRaisesRegex(KeyError, "from the callback"):
            self.caption(IMAGE, on_text=fails)

    def test_missing_model_raises_error_naming_the_folder(self):
        missing = os.path.join(self.scratch.name, "no_such_model")
        with self.assertRaises(deepstack.Error) as caught:
            deepstack.Engine(missing)
        self.assertIn(missing, str(caught.exception))
        self.assertIsInstance(caught.exception, RuntimeError)

    def test_bad_requests_raise(self):
        broken = os.path.join(self.scratch.name, "broken.png")
        with open(broken, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n not really a png")
        with self.assertRaises(deepstack.Error) as caught:
            self.caption(broken)
        self.assertIn(broken, str(caught.exception))
        with self.assertRaisesRegex(deepstack.Error, "no_such_image.png"):
            self.caption(os.path.join(self.scratch.name, "no_such_image.png"))
        with self.assertRaisesRegex(ValueError, "uint8"):
            self.caption(np.zeros((56, 80, 3), dtype=np.float32))
        with self.assertRaisesRegex(ValueError, r"\(height, width, 3\)"):
            self.caption(np.zeros((56, 80), dtype=np.uint8))
        with self.assertRaisesRegex(TypeError, "images\\[0\\]"):
            self.caption(42)
        with self.assertRaisesRegex(ValueError, "q5"):
            deepstack.Engine(MODEL, weights="q5")

    def test_history_and_length_controls(self):
        plain = self.caption(IMAGE)
        history = [{"role": "user", "text": "Hello.", "images": [IMAGE]}, {"role": "assistant", "text": "Hi. What should I look at?"}]
        with_history = self.caption(IMAGE, history=history)
        # the earlier turns and their image come before the request
        self.assertEqual(len(with_history.inputs), 2)
        self.assertGreater(with_history.prompt_tokens, plain.prompt_tokens + with_history.inputs[0].visual_tokens)
        long = self.engine.generate(PROMPT, images=[IMAGE], temperature=0, max_new_tokens=40, ignore_eos=True)
        self.assertEqual(long.generated_tokens, 40)
        at_least = self.engine.generate(PROMPT, images=[IMAGE], temperature=0, max_new_tokens=40, min_new_tokens=30)
        self.assertGreaterEqual(at_least.generated_tokens, 30)
        with self.assertRaisesRegex(TypeError, r"history\[0\]"):
            self.caption(IMAGE, history=["user: hello"])
        with self.assertRaisesRegex(ValueError, r"history\[1\]: unknown key 'content'"):
            self.caption(IMAGE, history=[{"role": "user", "text": "a"}, {"role": "assistant", "content": "b"}])
        with self.assertRaisesRegex(deepstack.Error, "role 'robot'"):
            self.caption(IMAGE, history=[{"role": "robot", "text": "a"}])

    def test_two_threads_share_one_engine(self):
        texts = [None, None]

        def work(i):
            image = IMAGE if i == 0 else np.asarray(Image.open(IMAGE).convert("RGB"))
            texts[i] = self.caption(image).text

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(texts, [self.expected, self.expected])

    def test_chat_and_options(self):
        chat = self.engine.chat()
        first = chat.send(PROMPT, images=[IMAGE], temperature=0, max_new_tokens=TOKENS)
        self.assertEqual(first.text, self.expected)
        second = chat.send("And again?", temperature=0, max_new_tokens=4)
        self.assertEqual(second.generated_tokens, 4)
        self.assertGreater(chat.tokens, first.prompt_tokens + first.generated_tokens + second.prompt_tokens)
        self.assertEqual(self.engine.options.threads, 1)
        self.assertEqual(self.engine.options.weights, "stored")
        self.assertEqual(self.engine.options.compute, "exact")


if __name__ == "__main__":
    unittest.main()
