"""deepstack: Qwen3-VL vision-language models on the CPU.

    import deepstack
    engine = deepstack.Engine("models/Qwen3-VL-2B-Instruct", threads=4)
    reply = engine.generate("Describe this image.", images=["cat.jpg"])
    print(reply.text)
    for piece in engine.stream("Describe this image.", images=[pil_image]):
        print(piece, end="", flush=True)

Images are paths, PIL images or H x W x 3 uint8 numpy arrays. Library errors raise
deepstack.Error. An Engine is thread-safe: the GIL is released while it works.
`python3 -m deepstack.batch` captions a folder or list of images on a Dask cluster.
"""

import queue
import threading

from ._core import Box, Chat, Engine, EngineOptions, Error, InputInfo, Reply, Sampling, Timings

__all__ = ["Box", "Chat", "Engine", "EngineOptions", "Error", "InputInfo", "Reply", "Sampling", "Timings"]

_DONE = object()


def _stream(answer, prompt, kwargs):
    """Runs answer(prompt, on_text=..., **kwargs) on a thread and yields its text pieces; the
    generator's return value is the Reply. Closing the generator early stops the reply at its
    next piece."""
    if "on_text" in kwargs:
        raise TypeError("stream() yields the text itself; on_text is for generate() and send()")
    pieces = queue.Queue()
    stop = threading.Event()
    outcome = {}

    def on_text(piece):
        pieces.put(piece)
        return not stop.is_set()

    def run():
        try:
            outcome["reply"] = answer(prompt, on_text=on_text, **kwargs)
        except BaseException as e:  # handed to the consumer's thread
            outcome["error"] = e
        finally:
            pieces.put(_DONE)

    worker = threading.Thread(target=run, name="deepstack-stream", daemon=True)
    worker.start()
    try:
        while (piece := pieces.get()) is not _DONE:
            yield piece
    finally:
        stop.set()
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]


def _engine_stream(self, prompt="", **kwargs):
    """Like generate(), but yields the reply's text pieces as they are produced; they join to
    reply.text. The generator's return value (StopIteration.value) is the Reply."""
    return _stream(self.generate, prompt, kwargs)


def _chat_stream(self, prompt="", **kwargs):
    """Like send(), but yields the reply's text pieces as they are produced. The generator's
    return value (StopIteration.value) is the Reply."""
    return _stream(self.send, prompt, kwargs)


Engine.stream = _engine_stream
Chat.stream = _chat_stream
