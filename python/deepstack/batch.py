"""Captions a dataset of images on a Dask cluster, appending one JSON line per image to OUT.jsonl.

    python3 -m deepstack.batch --model DIR --images DIR|LIST.txt|MANIFEST.jsonl --out OUT.jsonl
                               [--workers N] [--threads T] [--scheduler ADDRESS] [--prompt TEXT] ...

Each Dask worker loads the engine once (a worker plugin) and captions the images it is given.
Every finished image is appended to OUT.jsonl at once, as

    {"image": ..., "text": ..., "prompt_tokens": ..., "generated_tokens": ..., "stop_reason": ..., "seconds": ...}

and an image that fails becomes {"image": ..., "error": "..."} while the job goes on. A rerun skips
every image already in OUT.jsonl (errors too; --retry-errors redoes those, appending their new
records after the old ones: the last record of an image is the one that counts), so a crash loses
nothing finished. Without --scheduler the job starts a LocalCluster of --workers processes; with
it, the images' paths must be readable on every worker. Exit status 0 when every image was
handled (captioned or recorded as an error), 1 otherwise, 2 for bad arguments.
"""

import argparse
import asyncio
import json
import os
import sys
import time

from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".ppm", ".pgm", ".pnm")
PLUGIN_NAME = "deepstack-engine"


class Item:
    """One image to caption: `key` is its path as listed (the "image" of its record), `path`
    where the workers read it, `prompt` and `system` its request."""

    __slots__ = ("key", "path", "prompt", "system")

    def __init__(self, key, path, prompt, system):
        self.key, self.path, self.prompt, self.system = key, path, prompt, system


# ---- the images ---------------------------------------------------------------------------------


def list_images(source, prompt, system):
    """The images of a folder (searched recursively, sorted), of a .txt list (one path a line;
    blank lines and lines starting with # skipped) or of a .jsonl manifest ({"image": PATH} a
    line, with an optional "prompt" and "system"). Relative paths in a list or manifest are taken
    from the list's folder. Raises ValueError naming the file and line of a bad entry."""
    if os.path.isdir(source):
        found = []
        for folder, _, files in os.walk(source):
            found += [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        return [Item(p, os.path.abspath(p), prompt, system) for p in sorted(found)]
    base = os.path.dirname(os.path.abspath(source))
    items = []
    with open(source, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or (line.startswith("#") and not source.endswith(".jsonl")):
                continue
            if source.endswith(".jsonl"):
                try:
                    entry = json.loads(line)
                    key = entry["image"]
                    if not isinstance(key, str) or not key:
                        raise ValueError('"image" is not a path')
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f'{source}:{number}: expected {{"image": PATH, ...}}: {e}') from None
                items.append(Item(key, os.path.join(base, key), entry.get("prompt", prompt), entry.get("system", system)))
            else:
                items.append(Item(line, os.path.join(base, line), prompt, system))
    return items


def read_records(out_path):
    """The last record of each image in OUT.jsonl ({} when it does not exist). A line that is not
    a complete record (a crash in the middle of writing it) is ignored."""
    records = {}
    if not os.path.exists(out_path):
        return records
    with open(out_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("image"), str):
                records[record["image"]] = record
    return records


def still_to_do(items, records, retry_errors):
    """The items without a record (or with an error record, when retrying errors), each key once."""
    todo, seen = [], set()
    for item in items:
        if item.key in seen:
            continue
        seen.add(item.key)
        record = records.get(item.key)
        if record is None or (retry_errors and "error" in record):
            todo.append(item)
    return todo


class RecordFile:
    """OUT.jsonl opened for appending; each record is written as one line and synced to disk."""

    def __init__(self, path):
        self.file = open(path, "a+b")
        # A line cut short by a crash is ended, so the next record starts a line of its own.
        if self.file.tell() > 0:
            self.file.seek(-1, os.SEEK_END)
            if self.file.read(1) != b"\n":
                self.file.write(b"\n")

    def append(self, record):
        self.file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self):
        self.file.close()


# ---- the workers --------------------------------------------------------------------------------


class EnginePlugin(WorkerPlugin):
    """A Dask worker plugin: loads the engine once per worker (in a thread, so the worker keeps
    answering the scheduler meanwhile). A failed load is kept and reported by each caption."""

    name = PLUGIN_NAME

    def __init__(self, model, engine_options):
        self.model = model
        self.engine_options = engine_options
        self.engine = None
        self.error = None

    async def setup(self, worker):
        import deepstack

        def load():
            return deepstack.Engine(self.model, **self.engine_options)

        try:
            self.engine = await asyncio.get_running_loop().run_in_executor(None, load)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise


def caption(path, key, prompt, system, sampling):
    """Runs on a worker: the record of one image (its caption, or the error)."""
    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.engine is None:
        reason = plugin.error if plugin is not None else "the plugin is not registered"
        return {"image": key, "error": f"no engine on this worker: {reason}"}
    start = time.perf_counter()
    try:
        reply = plugin.engine.generate(prompt, images=[path], system=system, **sampling)
    except Exception as e:  # deepstack.Error (a bad image) or anything else: recorded, the job goes on
        return {"image": key, "error": str(e) or type(e).__name__}
    return {
        "image": key,
        "text": reply.text,
        "prompt_tokens": reply.prompt_tokens,
        "generated_tokens": reply.generated_tokens,
        "stop_reason": reply.stop_reason,
        "seconds": round(time.perf_counter() - start, 3),
    }


# ---- progress -----------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line every few seconds
    otherwise."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.done = self.errors = 0
        self.start = self.last = time.monotonic()
        self.tty = stream.isatty()

    def update(self, record):
        self.done += 1
        self.errors += "error" in record
        now = time.monotonic()
        if self.done == self.total or now - self.last >= (0.1 if self.tty else 10):
            self.last = now
            self.draw(now)

    def draw(self, now):
        width = 30
        filled = width * self.done // self.total if self.total else width
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} images, {self.errors} errors, "
                f"{rate:.2f}/s, {int(eta) // 60}:{int(eta) % 60:02d} left")
        self.stream.write(("\r" + line + ("\n" if self.done == self.total else "")) if self.tty else line + "\n")
        self.stream.flush()


# ---- the job ------------------------------------------------------------------------------------


def run(client, todo, out, model, engine_options, sampling, window):
    """Captions the items on `client`'s workers, appending each record to `out` (a RecordFile)
    as it arrives; returns how many were handled."""
    register = getattr(client, "register_plugin", None) or client.register_worker_plugin
    register(EnginePlugin(model, engine_options), name=PLUGIN_NAME)
    progress = Progress(len(todo))
    pending = iter(todo)
    keys = {}

    def submit(item):
        future = client.submit(caption, item.path, item.key, item.prompt, item.system, sampling, pure=False)
        keys[future.key] = item.key
        return future

    # At most `window` images in flight: a long list is not all handed to the scheduler at once.
    running = as_completed([submit(item) for _, item in zip(range(window), pending)])
    handled = 0
    for future in running:
        try:
            record = future.result()
        except Exception as e:  # the worker died on it (KilledWorker) or the task could not run
            record = {"image": keys[future.key], "error": f"{type(e).__name__}: {e}"}
        del keys[future.key]
        out.append(record)
        handled += 1
        progress.update(record)
        future.release()
        item = next(pending, None)
        if item is not None:
            running.add(submit(item))
    return handled


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python3 -m deepstack.batch",
        description="Captions images on a Dask cluster (a LocalCluster without --scheduler), appending one JSON line per "
        "image to OUT.jsonl; a rerun skips the images already there.")
    p.add_argument("--model", required=True, metavar="DIR", help="Hugging Face Qwen3-VL model folder (on every worker)")
    p.add_argument("--images", required=True, metavar="DIR|LIST.txt|MANIFEST.jsonl",
                   help='a folder (searched recursively), a .txt list of paths, or a .jsonl manifest ({"image": PATH, '
                   '"prompt": ...} a line)')
    p.add_argument("--out", required=True, metavar="OUT.jsonl", help="the JSON lines file the records are appended to")
    p.add_argument("--workers", type=int, metavar="N", default=1, help="worker processes of the LocalCluster (default 1)")
    p.add_argument("--threads", type=int, metavar="T", default=None,
                   help="engine threads per worker (default: the cores divided among the local workers; all cores with "
                   "--scheduler)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--retry-errors", action="store_true", help="caption again the images recorded as errors")
    p.add_argument("--prompt", metavar="TEXT", default="Describe this image.", help='the request after the image (default "Describe this image.")')
    p.add_argument("--system", metavar="TEXT", default="", help="a system message before the request")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="stop each caption after N tokens")
    p.add_argument("--temperature", type=float, help="sampling temperature; 0 is greedy")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--presence-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--weights", choices=("stored", "int8", "q4"), default="stored", help="weights as stored, or quantized at load")
    p.add_argument("--compute", choices=("exact", "fast"), default="exact", help="exact fp32 activations, or fast bf16 / int8")
    p.add_argument("--map-weights", action="store_true", help="map the weight files instead of reading them")
    p.add_argument("--min-pixels", type=int, default=0, help="smallest image area after resizing (0: the model's)")
    p.add_argument("--max-pixels", type=int, default=0, help="largest image area after resizing (0: the model's)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        items = list_images(args.images, args.prompt, args.system)
    except (OSError, ValueError) as e:
        print(f"error: --images: {e}", file=sys.stderr)
        return 1
    if not items:
        print(f"error: --images: no images in {args.images}", file=sys.stderr)
        return 1
    threads = args.threads
    if threads is None and args.scheduler is None:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
    engine_options = dict(threads=threads, weights=args.weights, compute=args.compute, map_weights=args.map_weights,
                          min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    sampling = {name: getattr(args, name) for name in ("max_new_tokens", "temperature", "top_p", "top_k", "min_p",
                                                       "repetition_penalty", "presence_penalty", "seed")
                if getattr(args, name) is not None}
    model = os.path.abspath(args.model) if args.scheduler is None else args.model
    try:
        todo = still_to_do(items, read_records(args.out), args.retry_errors)
    except (OSError, ValueError) as e:
        print(f"error: --out: {e}", file=sys.stderr)
        return 1
    print(f"{len(items)} images, {len(items) - len(todo)} already in {args.out}, {len(todo)} to caption", file=sys.stderr)
    if not todo:
        return 0

    cluster = out = None
    try:
        out = RecordFile(args.out)
        if args.scheduler is None:
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=0,
                                   dashboard_address=None)
            client = Client(cluster)
        else:
            client = Client(args.scheduler)
        with client:
            window = 4 * max(1, sum(client.nthreads().values()))
            handled = run(client, todo, out, model, engine_options, sampling, window)
    except KeyboardInterrupt:
        print(f"interrupted: the finished images are in {args.out}; run again to go on", file=sys.stderr)
        return 1
    except Exception as e:  # the model did not load, the scheduler is unreachable, OUT cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if out is not None:
            out.close()
        if cluster is not None:
            cluster.close()
    return 0 if handled == len(todo) else 1


if __name__ == "__main__":
    sys.exit(main())
