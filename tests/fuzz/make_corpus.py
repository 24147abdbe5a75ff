#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ (run from anywhere).
Image seeds other than PNG/BMP/PPM/GIF are made by ImageMagick's `convert` when it is installed."""
import base64, json, os, shutil, struct, subprocess, zlib

here = os.path.dirname(os.path.abspath(__file__))
tests = os.path.dirname(here)
corpus = os.path.join(here, "corpus")
fixture = os.path.join(tests, "fixtures", "tiny-image")


def out(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# ---- safetensors ----
def st(header, data=b""):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data

f32 = struct.pack("<4f", 1, 2, 3, 4)
out("safetensors", "two_tensors", st({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                      "b": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]}}, f32 + struct.pack("<q", 7)))
out("safetensors", "bf16_f16_i32", st({"__metadata__": {"format": "pt"},
                                       "x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
                                       "y": {"dtype": "F16", "shape": [1, 1], "data_offsets": [4, 6]},
                                       "z": {"dtype": "I32", "shape": [], "data_offsets": [6, 10]}}, b"\x80\x3f\x00\x40\x00\x3c\x05\x00\x00\x00"))
out("safetensors", "empty_header", st({}))
out("safetensors", "zero_size", st({"e": {"dtype": "F32", "shape": [0, 5], "data_offsets": [0, 0]}}))
out("safetensors", "overlap", st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, f32))
with open(os.path.join(fixture, "model", "model.safetensors"), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
small = {k: v for k, v in list(header.items())[:6]}
end = max(v["data_offsets"][1] for k, v in small.items() if k != "__metadata__")
out("safetensors", "fixture_prefix", st(small, bytes(end)[:64]))  # offsets past the data: an error seed

# ---- config.json / preprocessor / generation config (first byte: 0 = config.json, 1/3 = image/video
# preprocessor, 2 = generation_config.json) ----
for fx in ("tiny-image", "tiny-gated", "tiny-stack", "tiny-stackv", "tiny-video-4raw"):
    with open(os.path.join(tests, "fixtures", fx, "model", "config.json"), "rb") as f:
        out("config", "config_" + fx, b"\x00" + f.read())
with open(os.path.join(fixture, "model", "preprocessor_config.json"), "rb") as f:
    out("config", "preprocessor", b"\x01" + f.read())
with open(os.path.join(fixture, "model", "video_preprocessor_config.json"), "rb") as f:
    out("config", "video_preprocessor", b"\x03" + f.read())
out("config", "generation_sampling", b"\x02" + json.dumps({"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
    "repetition_penalty": 1.05, "eos_token_id": [151645, 151643], "max_new_tokens": 64}).encode())
out("config", "generation_greedy", b"\x02" + json.dumps({"do_sample": False, "eos_token_id": 151645}).encode())
out("config", "generation_negative_temperature", b"\x02" + json.dumps({"do_sample": True, "temperature": -1}).encode())
out("config", "minimal", b"\x00" + json.dumps({"model_type": "qwen3_vl", "text_config": {"hidden_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128, "vocab_size": 512},
    "vision_config": {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_position_embeddings": 256,
                      "out_hidden_size": 64, "deepstack_visual_indexes": [0]}, "image_token_id": 505, "video_token_id": 506,
    "vision_start_token_id": 503, "vision_end_token_id": 504, "tie_word_embeddings": True}).encode())

# ---- tokenizer (first byte even: tokenizer.json; odd: text for the fixed tokenizer) ----
def byte_level(b):
    printable = 33 <= b <= 126 or 161 <= b <= 172 or b >= 174
    if printable:
        return chr(b)
    k = sum(1 for x in range(b) if not (33 <= x <= 126 or 161 <= x <= 172 or x >= 174))
    return chr(256 + k)

vocab = {byte_level(b): b for b in range(256)}
vocab.update({"he": 256, "ll": 257, "hell": 258, "hello": 259})
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
tok = {"version": "1.0", "truncation": None, "padding": None,
       "added_tokens": [{"id": 300 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                         "normalized": False, "special": True} for i, s in enumerate(specials)],
       "normalizer": {"type": "NFC"},
       "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
           {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}| ?\\p{L}+|\\s+"}, "behavior": "Isolated", "invert": False},
           {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
       "post_processor": None, "decoder": {"type": "ByteLevel"},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                 "fuse_unk": False, "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                 "merges": ["h e", "l l", "he ll", "hell o"]}}
out("tokenizer", "tokenizer_json", b"\x00" + json.dumps(tok).encode())
tok2 = dict(tok)
tok2["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
tok2["normalizer"] = None
tok2["model"] = dict(tok["model"], merges=[["h", "e"], ["l", "l"]])
out("tokenizer", "tokenizer_json_gpt2", b"\x02" + json.dumps(tok2).encode())
for i, text in enumerate(["hello world", "<|im_start|>user\nDescribe this image.<|im_end|>\n",
                          "caf\u00e9 na\u0131\u0308ve \u4f60\u597d 12345 \U0001f600", "tabs\tand  spaces\r\n\n end ",
                          "it's we'll I'M 2024-01-01", " word word, words"]):
    out("tokenizer", "text%d" % i, b"\x01" + text.encode())
out("tokenizer", "text_invalid_utf8", b"\x01hello \xff\xfe \xc3")

# ---- images ----
for name in ("mode_L.png", "mode_P.png", "mode_RGBA.png", "mode_LA.png", "resize_noise_to_5x3.png", "resize_noise_to_7x47.png"):
    with open(os.path.join(tests, "data", "image", name), "rb") as f:
        out("image", name, f.read())
with open(os.path.join(fixture, "inputs", "image0_80x56.png"), "rb") as f:
    png = f.read()
out("image", "fixture_80x56.png", png)

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)

def make_png(w, h, color_type, bit_depth, rows):
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)) +
            png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))

out("image", "rgb16_3x2.png", make_png(3, 2, 2, 16, [bytes(range(18)), bytes(range(18, 36))]))
out("image", "grey1_8x2.png", make_png(8, 2, 0, 1, [b"\xa5", b"\x5a"]))
w, h = 4, 3
bmp_rows = b"".join(bytes([(x * 60) % 256, (y * 80) % 256, 128] * 1) for y in range(h) for x in range(w))
out("image", "rgb_4x3.bmp", b"BM" + struct.pack("<IHHI", 54 + len(bmp_rows), 0, 0, 54) +
    struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(bmp_rows), 2835, 2835, 0, 0) + bmp_rows)
out("image", "rgb_3x2.ppm", b"P6\n3 2\n255\n" + bytes(range(18)))
out("image", "grey_3x2.pgm", b"P5 3 2 255\n" + bytes([0, 50, 100, 150, 200, 250]))
out("image", "rgb_2x2.tga", bytes([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 24, 0]) + bytes(range(12)))
# A fuzzer find (a slow unit): 66 bytes of TGA header declaring 13648x13088 with no pixels behind it.
out("image", "tga_truncated_13648x13088", bytes([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]) + b"P5 3  25\n\x005\x00\x11\x00\x00\x02\x00\x02: value is not defined\x00\x18\x00" + bytes(range(12)))
# A fuzzer find: a PGM width of 94 digits (stb_image's header parser overflows int).
out("image", "pnm_width_overflow", b"P5  " + b"9" * 94 + b"2\x96\x11\xfa")
# A fuzzer find, kept as found (tests/fuzz/corpus/image/png_empty_idat): a PNG whose first IDAT
# chunk is empty (stb_image passed a null buffer to memcpy); not regenerated here. Likewise
# jpeg_dht_past_segment: a Huffman table of 4080 codes read past its segment's end.
out("image", "gif_1x1.gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
# Kept formats made by Pillow (JPEG baseline and progressive, run-length TGA, GIF) when it is installed.
try:
    from PIL import Image
    flat = Image.new("RGB", (64, 48), (10, 200, 30))
    flat.save(os.path.join(corpus, "image", "jpeg_64x48.jpg"))
    Image.new("RGB", (640, 480), (10, 200, 30)).save(os.path.join(corpus, "image", "jpeg_progressive_640x480.jpg"), progressive=True)
    flat.save(os.path.join(corpus, "image", "tga_rle_64x48.tga"), compression="tga_rle")
    flat.save(os.path.join(corpus, "image", "gif_64x48.gif"))
except ImportError:
    pass
# Tiny files declaring huge pictures (refused before decoding), formats that are not decoded, and
# a JPEG Huffman table of 4080 codes (stb_image would write past its 257-entry tables).
out("image", "gif_screen_13000x13000", b"GIF89a" + struct.pack("<HH", 13000, 13000) + b"\x80\x00\x00" + bytes(3) + b"\xff" * 3 + b"," +
    struct.pack("<HHHH", 0, 0, 13000, 13000) + b"\x00\x02\x02\x44\x01\x00;")
out("image", "tga_rle_16000x16000", bytes([0, 0, 10]) + bytes(5) + struct.pack("<HHHH", 0, 0, 16000, 16000) + bytes([24, 0, 0xff, 1, 2, 3]))
out("image", "psd_10000x10000", b"8BPS" + struct.pack(">H", 1) + bytes(6) + struct.pack(">HIIHH", 3, 10000, 10000, 8, 3) + bytes(20))
out("image", "hdr_10000x10000", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 10000 +X 10000\n")
out("image", "pic_truncated", b"\x53\x80\xF6\x34" + bytes(104))
jpeg = os.path.join(corpus, "image", "jpeg_64x48.jpg")
if os.path.exists(jpeg):
    with open(jpeg, "rb") as f:
        j = bytearray(f.read())
    i = j.find(b"\xff\xc4")
    j[i + 5:i + 21] = b"\xff" * 16
    out("image", "jpeg_dht_4080_codes", bytes(j))
if shutil.which("convert"):
    src = os.path.join(fixture, "inputs", "image0_80x56.png")
    for name, args in (("small.jpg", ["-resize", "24x17", "-quality", "80"]), ("progressive.jpg", ["-resize", "16x12", "-interlace", "JPEG"]),
                       ("grey.jpg", ["-resize", "9x7", "-colorspace", "Gray"]), ("anim.gif", ["-resize", "6x5"])):
        dst = os.path.join(corpus, "image", name)
        if subprocess.run(["convert", src] + args + [dst], capture_output=True).returncode != 0 and os.path.exists(dst):
            os.remove(dst)

# ---- boxes (grounding answers; first four bytes: image width and height - 1, little-endian) ----
size = struct.pack("<HH", 639, 479)
out("boxes", "fenced_list", size + b'```json\n[{"bbox_2d": [10, 20, 300, 400], "label": "cat"}, {"point_2d": [500, 500], "label": "dog"}]\n```')
out("boxes", "cut_off", size + b'[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6')
out("boxes", "nested_objects", size + b'{"result": {"items": [{"bbox_2d": [900, 900, 100, 100]}]}} and {"point_2d": [1e308, -5]}')
out("boxes", "deep_nesting", size + b'{"a":' * 300 + b'1' + b'}' * 300)

# ---- prompt (binary layout, see fuzz_prompt.cpp: visuals, messages, then ids / context / sampling) ----
txt = b"Describe this image."
out("prompt", "one_image", bytes([1, 0, 0, 0, 0x08, 0x00, 21]) + txt + bytes([1, 200, 0, 10, 50, 0, 100, 100, 0, 1]))
out("prompt", "image_and_video", bytes([2, 0, 3, 3, 0, 0, 0x10, 0x00, 0x00, 9]) + b"Compare !" + bytes([1, 250]) + bytes(16) +
    bytes([16, 20, 190, 5, 100, 128, 7]))
out("prompt", "text_only", bytes([0, 1, 0x08, 13]) + b"hello <|im_en" + bytes([5]) + b"world" + bytes([1, 100]))
out("prompt", "injected_pad", bytes([1, 0, 0, 0, 0x08, 0x00, 17]) + b"<|image_pad|>abcd" + bytes([1, 255]))
out("prompt", "system_turn", bytes([0, 2, 3, 10]) + b"Be brief.." + bytes([0, 6]) + b"hi 123" + bytes([0, 255]))
# ---- chat_request (deepstack-server request bodies) ----
with open(os.path.join(fixture, "inputs", "image0_80x56.png"), "rb") as f:
    png_url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
def chat(name, body):
    out("chat_request", name, json.dumps(body))
chat("text", {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0})
chat("image_stream", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": png_url}}, {"type": "text", "text": "Describe this image."}]}],
    "stream": True, "stream_options": {"include_usage": True}, "stop": ["\n\n", "END"], "seed": 7, "top_p": 0.8, "top_k": 20})
chat("multi_turn", {"messages": [{"role": "developer", "content": "Answer in French."},
    {"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": png_url}]},
    {"role": "assistant", "content": "Un chat."}, {"role": "system", "content": "Shorter."}, {"role": "user", "content": "And?"}],
    "max_completion_tokens": 16, "min_tokens": 2, "ignore_eos": True, "presence_penalty": 0.5, "repetition_penalty": 1.1})
chat("refused_urls", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]})
chat("bad_types", {"messages": [{"role": "tool", "content": 5}], "max_tokens": "8", "stop": [1, 2], "temperature": -1, "n": 2})
out("chat_request", "bad_base64", '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0K*"}}]}]}')
out("chat_request", "truncated", '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1')
print("corpus written to", corpus)
