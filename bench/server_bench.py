#!/usr/bin/env python3
"""Throughput of deepstack-server under concurrent streams (Python standard library only).

Starts deepstack-server on a model folder (or targets a running server with --url), then for each
stream count runs that many streamed chat completions at once, each with ignore_eos so every reply
is exactly --max-tokens long, and reports:
  aggregate tok/s  all streams' reply tokens / wall time from the first request to the last reply end
  decode tok/s     reply tokens after each stream's first / time from the first first-token to the last end
  TTFT             time from sending a request to its first content chunk (mean and max over the streams)
Example:
  bench/server_bench.py --server build/bin/deepstack-server --model DIR --weights q4 --compute fast --threads 2
"""
import argparse, http.client, json, subprocess, sys, threading, time, urllib.parse


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080 (else --server and --model start one)")
    p.add_argument("--server", help="the deepstack-server program")
    p.add_argument("--model", help="model folder for the started server")
    p.add_argument("--weights", default="q4")
    p.add_argument("--compute", default="fast")
    p.add_argument("--threads", type=int, default=0, help="the server's --threads: OpenMP threads of its prefills and decode steps (0: its default)")
    p.add_argument("--streams", default="1,2,4,8", help="stream counts to run, comma-separated")
    p.add_argument("--max-tokens", type=int, default=128, help="reply tokens per stream")
    p.add_argument("--prompt", default="Write a long story about a lighthouse keeper.")
    p.add_argument("--api-key", default="")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    a = p.parse_args()
    if not a.url and not (a.server and a.model):
        p.error("give --url, or --server and --model")
    a.streams = [int(s) for s in a.streams.split(",")]
    return a


def start_server(a):
    cmd = [a.server, "--model", a.model, "--port", "0", "--weights", a.weights, "--compute", a.compute,
           "--parallel", str(max(a.streams)), "--queue", str(max(a.streams))]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        sys.exit("deepstack-server did not start: " + line)
    return proc, line.split("listening on ")[1].split()[0]


def stream_once(url, a, result):
    u = urllib.parse.urlparse(url)
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": a.prompt}], "max_tokens": a.max_tokens,
                       "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if a.api_key:
        headers["Authorization"] = "Bearer " + a.api_key
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    result["sent"] = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        result["error"] = "HTTP %d: %s" % (resp.status, resp.read()[:300])
        return
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            result["tokens"] = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices", []):
            if c["delta"].get("content") and "first" not in result:
                result["first"] = time.perf_counter()
    result["end"] = time.perf_counter()
    conn.close()


def run(url, a, n):
    results = [{} for _ in range(n)]
    threads = [threading.Thread(target=stream_once, args=(url, a, r)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        sys.exit("stream failed: " + errors[0])
    start = min(r["sent"] for r in results)
    end = max(r["end"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    first = min(r["first"] for r in results)
    ttft = [r["first"] - r["sent"] for r in results]
    return {"streams": n, "tokens": tokens, "seconds": end - start, "aggregate_tok_s": tokens / (end - start),
            "decode_tok_s": (tokens - n) / (end - first), "ttft_mean_s": sum(ttft) / n, "ttft_max_s": max(ttft)}


def main():
    a = parse_args()
    proc = None
    url = a.url
    if not url:
        proc, url = start_server(a)
    try:
        run(url, a, 1)  # warm-up: first-touch of the weights and the scratch buffers
        rows = [run(url, a, n) for n in a.streams]
    finally:
        if proc:
            proc.terminate()
            proc.wait()
    if a.json:
        print(json.dumps({"max_tokens": a.max_tokens, "runs": rows}))
        return
    base = rows[0]["aggregate_tok_s"]
    print("%7s %8s %10s %16s %13s %14s %13s" % ("streams", "tokens", "seconds", "aggregate tok/s", "decode tok/s", "TTFT mean s", "TTFT max s"))
    for r in rows:
        print("%7d %8d %10.2f %10.2f (%.2fx) %13.2f %14.3f %13.3f" % (r["streams"], r["tokens"], r["seconds"], r["aggregate_tok_s"],
              r["aggregate_tok_s"] / base, r["decode_tok_s"], r["ttft_mean_s"], r["ttft_max_s"]))


if __name__ == "__main__":
    main()
