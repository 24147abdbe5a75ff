// deepstack-bench: speed and memory of a Qwen3-VL model on this machine, every figure printed
// beside the machine limit that bounds it. The model is either a real folder (--model DIR) or a
// synthetic one with the exact shapes of a released checkpoint (--shape 2b|4b|8b|30b-a3b, random
// bf16 weights made in memory, nothing downloaded; a model larger than half the memory is made
// tensor by tensor as the load asks for it, each quantized and released before the next).
//
// Limits: decode reads every decoder and lm_head weight once per token (of a mixture-of-experts
// layer: the router and the chosen experts), so its bound is memory bandwidth / bytes read per token; vision and prefill do 2 FLOPs per weight per patch or
// token (plus attention), so their bound is FLOPs / peak (fp32 FMA, or bf16 dot products in bf16
// compute mode). Beside it: the effective rate, the matrices' FLOPs alone (2 per weight per
// patch or token) over the time taken, as a share of the same peak. The limits are measured before and after the runs and the better of the two is
// used (a shared host's figures drift); the memory read is measured in 2 MiB pages like the weights.
// Decode's bandwidth is also measured right before and after its timing, as a plain read of the
// very bytes it streams; its bound uses the best of all these reads.
#include <deepstack.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>

using namespace deepstack;
// The bench measures the kernels and weight layouts themselves, so like the tests it reads the
// engine internals (namespace deepstack::detail), not only the Engine face.
using namespace deepstack::detail;

namespace {

const char* kUsage =
    "usage: deepstack-bench (--shape 2b|4b|8b|30b-a3b | --model DIR) [options]\n"
    "  --shape S            synthetic model with the shapes of Qwen3-VL-S-Instruct (random bf16 weights;\n"
    "                       30b-a3b is the mixture of experts, made tensor by tensor: needs --weights int8|q4)\n"
    "  --model DIR          a model folder (config.json + safetensors), read into memory in 2 MiB pages\n"
    "  --map-weights        with --model: map the safetensors files instead (LoadOptions::map_weights)\n"
    "  --write DIR          with --shape: write the synthetic model to DIR (config.json, model.safetensors) and exit\n"
    "  --weights bf16|int8|q4  weights at run time: as stored, or quantized at load to 8 / 4 bits\n"
    "  --compute f32|bf16   activations of the matrix products (default f32)\n"
    "  --threads N          OpenMP threads (default: all)\n"
    "  --decode-steps N     decode steps timed at a 256-token context (default 16)\n"
    "  --batch B1,B2,...    also time decode steps of B sequences at once (Session::decode_batch, each\n"
    "                       at a 256-token context): per-step time and aggregate tokens/s for each B\n"
    "  --caption            also time a caption-sized run (448x448 image + 16 text tokens, 32 decode steps)\n"
    "                       and report the resident memory after it\n"
    "  --skip-vision  --skip-vision-896  --skip-prefill  --skip-prefill-1024  --skip-decode  --skip-peaks\n"
    "  --json               one JSON line on stdout instead of the table\n";

struct Args {
    std::string shape, model_dir, write_dir, weights = "bf16", compute = "f32";
    int threads = 0, decode_steps = 16;
    std::vector<int> batches;  // --batch
    bool json = false, caption = false, skip_vision = false, skip_vision_896 = false, skip_prefill = false, skip_prefill_1024 = false,
         skip_decode = false, skip_peaks = false, map_weights = false;
};

void progress(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void progress(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs("[bench] ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
}

using Clock = std::chrono::steady_clock;

// ---- process memory ----

// A field of /proc/self/status in bytes (VmHWM, VmRSS, RssAnon, RssFile), or -1.
int64_t proc_status_bytes(const char* field) {
    std::ifstream in("/proc/self/status");
    std::string line;
    const std::string key = std::string(field) + ":";
    while (std::getline(in, line))
        if (line.compare(0, key.size(), key) == 0) return std::stoll(line.substr(key.size())) * 1024;
    return -1;
}

int64_t peak_rss_bytes() {
    const int64_t hwm = proc_status_bytes("VmHWM");
    if (hwm >= 0) return hwm;
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return int64_t(ru.ru_maxrss) * 1024;
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string a, b, c;
    in >> a >> b >> c;
    return a + " " + b + " " + c;
}

// ---- machine limits ----

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Streaming read of a buffer much larger than the caches, all threads; best of 10 passes. The
// buffer sits in 2 MiB pages like the weights (big_alloc): in 4 KiB pages the TLB misses cap the
// read at ~47 GB/s on a 2-core AMD EPYC VM, against ~75 GB/s in 2 MiB pages, and the bound must be the
// machine's, not that of a slower page size.
double memory_bandwidth_gbps() {
    const int64_t n = int64_t(1) << 28;  // 1 GiB of floats
    detail::big_vector<float> held(static_cast<size_t>(n));
    float* buf = held.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) buf[size_t(i)] = 1.f;
    const auto stream_sum = detail::kernels().stream_sum;
    double best = 0, sink = 0;
    for (int pass = 0; pass < 10; ++pass) {
        const auto t0 = Clock::now();
        double total = 0;
#pragma omp parallel reduction(+ : total)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            const int64_t begin = n * t / nt / 64 * 64, end = n * (t + 1) / nt / 64 * 64;
            total += stream_sum(buf + begin, end - begin);
        }
        best = std::max(best, double(n) * 4 / detail::seconds_since(t0) / 1e9);
        sink += total;
    }
    if (sink != 10.0 * double(n)) progress("warning: bandwidth passes summed %g, expected %g", sink, 10.0 * double(n));
    return best;
}

// `kernel(iters)` runs register-resident multiply-adds on one thread (flops_per_iter each
// iteration) and returns a checksum; all threads run it together. Best of 10 short passes (a
// busy machine leaves some of them undisturbed).
template <class Kernel>
double peak_gflops(double flops_per_iter, Kernel kernel) {
    const int64_t iters = int64_t(1) << 22;
    double best = 0, sink = 0;
    for (int pass = 0; pass < 10; ++pass) {
        const auto t0 = Clock::now();
        int threads = 1;
        double total = 0;
#pragma omp parallel reduction(+ : total)
        {
#ifdef _OPENMP
#pragma omp single
            threads = omp_get_num_threads();
#endif
            total += kernel(iters);
        }
        best = std::max(best, double(threads) * double(iters) * flops_per_iter / detail::seconds_since(t0) / 1e9);
        sink += total;
    }
    if (!(sink == sink)) progress("warning: peak loop produced NaN");
    return best;
}

// The register-resident loops of the active SIMD level (kernels_peaks.hpp; their operation counts
// are the same constants at every level but fp32 FMA's); 0 where the level lacks the
// instruction (bf16 and int8 dot products, AMX tiles where usable).
double fma_peak_gflops() { return peak_gflops(detail::kernels().fma_flops_per_iter, detail::kernels().fma_loop); }
double bf16_peak_gflops() {
    return detail::has_bf16_dot_products() ? peak_gflops(detail::kern_scalar::peaks::kDpbf16Flops, detail::kernels().dpbf16_loop) : 0;
}
double int8_peak_gflops() {
    return detail::has_bf16_dot_products() ? peak_gflops(detail::kern_scalar::peaks::kDpbusdOps, detail::kernels().dpbusd_loop) : 0;
}
double amx_peak_gflops() { return detail::exact_gemm_on_amx() ? peak_gflops(detail::kern_scalar::peaks::kAmxFlops, detail::kernels().amx_loop) : 0; }

// ---- synthetic model ----

struct ShapeSpec {
    int D, layers, heads, kv_heads, I, vdepth, Dv, Iv;
    std::vector<int> deepstack;
    bool tie;
    int experts = 0, experts_per_tok = 0, moe_I = 0;  // mixture of experts: every layer sparse
};

ShapeSpec shape_spec(const std::string& s) {
    if (s == "2b") return {2048, 28, 16, 8, 6144, 24, 1024, 4096, {5, 11, 17}, true};
    if (s == "4b") return {2560, 36, 32, 8, 9728, 24, 1024, 4096, {5, 11, 17}, true};
    if (s == "8b") return {4096, 36, 32, 8, 12288, 27, 1152, 4304, {8, 16, 24}, false};
    if (s == "30b-a3b") return {2048, 48, 32, 4, 6144, 27, 1152, 4304, {8, 16, 24}, false, 128, 8, 768};
    throw Error("--shape must be 2b, 4b, 8b or 30b-a3b (got '" + s + "')");
}

// config.json of Qwen3-VL-<shape>-Instruct.
nlohmann::json synthetic_config(const ShapeSpec& s) {
    nlohmann::json j = {{"model_type", s.experts ? "qwen3_vl_moe" : "qwen3_vl"},
            {"tie_word_embeddings", s.tie},
            {"text_config",
             {{"hidden_size", s.D}, {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
              {"num_key_value_heads", s.kv_heads}, {"head_dim", 128}, {"intermediate_size", s.I}, {"vocab_size", 151936},
              {"rms_norm_eps", 1e-6}, {"rope_theta", 5000000.0}, {"max_position_embeddings", 262144},
              {"eos_token_id", 151645},
              {"rope_scaling", {{"rope_type", "default"}, {"mrope_interleaved", true}, {"mrope_section", {24, 20, 20}}}}}},
            {"vision_config",
             {{"depth", s.vdepth}, {"hidden_size", s.Dv}, {"num_heads", 16}, {"intermediate_size", s.Iv},
              {"patch_size", 16}, {"temporal_patch_size", 2}, {"spatial_merge_size", 2}, {"in_channels", 3},
              {"num_position_embeddings", 2304}, {"out_hidden_size", s.D}, {"deepstack_visual_indexes", s.deepstack}}}};
    if (s.experts) {
        auto& t = j["text_config"];
        t["num_experts"] = s.experts, t["num_experts_per_tok"] = s.experts_per_tok, t["moe_intermediate_size"] = s.moe_I;
        t["decoder_sparse_step"] = 1, t["mlp_only_layers"] = nlohmann::json::array(), t["norm_topk_prob"] = true;
    }
    return j;
}

struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
    enum Fill { Random, One, Zero } fill = Random;
    int64_t numel() const {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        return n;
    }
};

// Every tensor of a checkpoint with this config.
std::vector<TensorSpec> synthetic_tensors(const ModelConfig& c) {
    std::vector<TensorSpec> ts;
    const VisionConfig& v = c.vision;
    const TextConfig& t = c.text;
    const int64_t Dv = v.hidden_size, M = v.merged_dim(), D = t.hidden_size, hd = t.head_dim;
    auto lin = [&](const std::string& p, int64_t out, int64_t in, bool bias) {
        ts.push_back({p + ".weight", {out, in}});
        if (bias) ts.push_back({p + ".bias", {out}, TensorSpec::Zero});
    };
    auto norm = [&](const std::string& p, int64_t n, bool bias) {
        ts.push_back({p + ".weight", {n}, TensorSpec::One});
        if (bias) ts.push_back({p + ".bias", {n}, TensorSpec::Zero});
    };
    const std::string vp = "model.visual.";
    ts.push_back({vp + "patch_embed.proj.weight", {Dv, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size}});
    ts.push_back({vp + "patch_embed.proj.bias", {Dv}, TensorSpec::Zero});
    ts.push_back({vp + "pos_embed.weight", {v.num_position_embeddings, Dv}});
    for (int i = 0; i < v.depth; ++i) {
        const std::string b = vp + "blocks." + std::to_string(i) + ".";
        norm(b + "norm1", Dv, true);
        norm(b + "norm2", Dv, true);
        lin(b + "attn.qkv", 3 * Dv, Dv, true);
        lin(b + "attn.proj", Dv, Dv, true);
        lin(b + "mlp.linear_fc1", v.intermediate_size, Dv, true);
        lin(b + "mlp.linear_fc2", Dv, v.intermediate_size, true);
    }
    auto merger = [&](const std::string& p, bool postshuffle) {
        norm(p + ".norm", postshuffle ? M : Dv, true);
        lin(p + ".linear_fc1", M, M, true);
        lin(p + ".linear_fc2", v.out_hidden_size, M, true);
    };
    merger(vp + "merger", false);
    for (size_t k = 0; k < v.deepstack_visual_indexes.size(); ++k) merger(vp + "deepstack_merger_list." + std::to_string(k), true);
    const std::string tp = "model.language_model.";
    ts.push_back({tp + "embed_tokens.weight", {t.vocab_size, D}});
    for (int i = 0; i < t.num_hidden_layers; ++i) {
        const std::string l = tp + "layers." + std::to_string(i) + ".";
        norm(l + "input_layernorm", D, false);
        norm(l + "post_attention_layernorm", D, false);
        norm(l + "self_attn.q_norm", hd, false);
        norm(l + "self_attn.k_norm", hd, false);
        lin(l + "self_attn.q_proj", t.num_attention_heads * hd, D, false);
        lin(l + "self_attn.k_proj", t.num_key_value_heads * hd, D, false);
        lin(l + "self_attn.v_proj", t.num_key_value_heads * hd, D, false);
        lin(l + "self_attn.o_proj", D, t.num_attention_heads * hd, false);
        if (t.sparse_layer(i)) {  // router and fused input-major experts
            const int64_t E = t.num_experts, I = t.moe_intermediate_size;
            lin(l + "mlp.gate", E, D, false);
            ts.push_back({l + "mlp.experts.gate_up_proj", {E, D, 2 * I}});
            ts.push_back({l + "mlp.experts.down_proj", {E, I, D}});
        } else {
            lin(l + "mlp.gate_proj", t.intermediate_size, D, false);
            lin(l + "mlp.up_proj", t.intermediate_size, D, false);
            lin(l + "mlp.down_proj", D, t.intermediate_size, false);
        }
    }
    norm(tp + "norm", D, false);
    if (!c.tie_word_embeddings) lin("lm_head", t.vocab_size, D, false);
    return ts;
}

// n bf16 values: uniform with std 0.02 from a stateless 32-bit hash of (seed, index), so the
// loop vectorises and the result does not depend on the thread count; or all one / all zero.
void fill_bf16(uint16_t* dst, int64_t n, TensorSpec::Fill fill, uint32_t seed) {
    if (fill != TensorSpec::Random) {
        std::fill(dst, dst + n, fill == TensorSpec::One ? uint16_t(0x3f80) : uint16_t(0));
        return;
    }
    const float scale = 0.02f * std::sqrt(3.f) / 32768.f;  // int16 -> uniform(-a, a), a = 0.02*sqrt(3)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        uint32_t x = (uint32_t(i) ^ seed) * 0x9E3779B1u;
        x ^= x >> 15;
        x *= 0x2C1B3C6Du;
        x ^= x >> 13;
        const float f = float(int16_t(x >> 16)) * scale;
        uint32_t u;
        std::memcpy(&u, &f, 4);
        dst[i] = uint16_t(u >> 16);
    }
}

// safetensors header for the tensors laid out back to back in order (all BF16); returns the
// header bytes (length prefix included).
std::string safetensors_header(const std::vector<TensorSpec>& ts) {
    nlohmann::json h = nlohmann::json::object();
    uint64_t off = 0;
    for (const auto& t : ts) {
        const uint64_t bytes = uint64_t(t.numel()) * 2;
        h[t.name] = {{"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {off, off + bytes}}};
        off += bytes;
    }
    std::string s = h.dump();
    while ((s.size() + 8) % 8) s += ' ';
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(s.size()) >> (8 * i)) & 0xff);
    return out + s;
}

int64_t synthetic_bytes(const std::vector<TensorSpec>& ts) {
    int64_t total = 0;
    for (const auto& t : ts) total += t.numel() * 2;
    return total;
}

// Whether a synthetic model is made tensor by tensor during the load (more than half the memory).
bool made_on_demand(const std::vector<TensorSpec>& ts) {
    return double(synthetic_bytes(ts)) > 0.5 * double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE));
}

// The synthetic checkpoint as one safetensors image made in the store's memory, held as a file
// read in (the default load) is: the model re-orders its matrices there as it would for --model.
// A model larger than half the memory is made on demand instead: each tensor when the load first
// asks for it (the same values), so a quantized load holds one stored tensor at a time; the
// seconds spent making them are added to *making_s as the load runs.
void add_synthetic(WeightStore& ws, const std::vector<TensorSpec>& ts, const std::string& name, const std::shared_ptr<double>& making_s) {
    std::map<std::string, std::pair<const TensorSpec*, uint32_t>> seeds;  // the fill of each tensor
    uint32_t seed = 0;
    for (const auto& t : ts) seeds[t.name] = {&t, seed += 0x9E3779B9u};
    if (made_on_demand(ts)) {
        ws.add_generated_on_demand(name, safetensors_header(ts), size_t(synthetic_bytes(ts)),
                                   [seeds, making_s](const TensorInfo& info, uint8_t* data) {
                                       const auto t0 = Clock::now();
                                       const auto& [t, s] = seeds.at(info.name);
                                       fill_bf16(reinterpret_cast<uint16_t*>(data), t->numel(), t->fill, s);
                                       *making_s += detail::seconds_since(t0);
                                   });
        return;
    }
    ws.add_generated(name, safetensors_header(ts), size_t(synthetic_bytes(ts)), [&](uint8_t* data) {
        auto* p = reinterpret_cast<uint16_t*>(data);  // the data area starts on a 64-byte line
        for (const auto& t : ts) {
            fill_bf16(p, t.numel(), t.fill, seeds.at(t.name).second);
            p += t.numel();
        }
    });
}

// Writes config.json and model.safetensors to dir, one tensor at a time.
void write_synthetic(const std::string& dir, const nlohmann::json& config, const std::vector<TensorSpec>& ts) {
    std::ofstream cfg(dir + "/config.json");
    if (!(cfg << config.dump(2) << "\n")) throw Error(dir + "/config.json: cannot write (does the folder exist?)");
    const std::string path = dir + "/model.safetensors";
    std::ofstream out(path, std::ios::binary);
    const std::string header = safetensors_header(ts);
    out.write(header.data(), std::streamsize(header.size()));
    std::vector<uint16_t> tmp;
    uint32_t seed = 0;
    for (const auto& t : ts) {
        tmp.resize(size_t(t.numel()));
        fill_bf16(tmp.data(), t.numel(), t.fill, seed += 0x9E3779B9u);
        out.write(reinterpret_cast<const char*>(tmp.data()), std::streamsize(tmp.size() * 2));
    }
    if (!out) throw Error(path + ": write failed");
}

// ---- what the model reads ----

int64_t matrix_bytes(const Matrix& m) {
    if (m.dtype == DType::Q8 || m.dtype == DType::Q4) {
        const auto& q = *static_cast<const QuantWeights*>(m.data);
        return int64_t(q.q.size()) + int64_t(q.scale.size() * sizeof(q.scale[0]));
    }
    return m.rows * m.cols * int64_t(detail::dtype_size(m.dtype));
}

// Parameters and bytes of the matrices each stage reads, and the extra FLOPs of attention.
struct Footprint {
    int64_t params = 0, bytes = 0;  // every weight of the model as held at run time
    int64_t vis_patch_params = 0;   // matrix weights applied once per patch (patch embed, blocks)
    int64_t vis_embed_params = 0;   // of which the patch embedding
    int64_t vis_token_params = 0;   // applied once per merged token (mergers)
    // decoder matrices applied to each token: of a mixture-of-experts layer the router and the
    // average share of its experts a token chooses (num_experts_per_tok of num_experts)
    int64_t text_layer_params = 0, text_layer_bytes = 0;
    int64_t lm_head_params = 0, lm_head_bytes = 0;
};

Footprint footprint(const Model& m) {
    Footprint f;
    auto mat = [&](const Matrix& w, int64_t* params, int64_t* bytes) {
        const int64_t p = w.rows * w.cols, b = matrix_bytes(w);
        f.params += p;
        f.bytes += b;
        if (params) *params += p;
        if (bytes) *bytes += b;
    };
    auto vec = [&](const std::vector<float>& v) {  // norms and biases, held as fp32 copies (a few MB)
        f.params += int64_t(v.size());
        f.bytes += int64_t(v.size()) * 4;
    };
    auto lin = [&](const Linear& l, int64_t* params) {
        mat(l.w, params, nullptr);
        vec(l.b);
    };
    const VisionWeights& v = m.vision;
    lin(v.patch_embed, &f.vis_patch_params);
    f.vis_embed_params = f.vis_patch_params;
    mat(v.pos_embed, nullptr, nullptr);
    for (const auto& b : v.blocks) {
        for (const auto* n : {&b.norm1, &b.norm2}) vec(n->w), vec(n->b);
        for (const auto* l : {&b.qkv, &b.proj, &b.fc1, &b.fc2}) lin(*l, &f.vis_patch_params);
    }
    std::vector<const MergerWeights*> mergers{&v.merger};
    for (const auto& d : v.deepstack_mergers) mergers.push_back(&d);
    for (const auto* mg : mergers) {
        vec(mg->norm.w), vec(mg->norm.b);
        lin(mg->fc1, &f.vis_token_params);
        lin(mg->fc2, &f.vis_token_params);
    }
    const TextWeights& t = m.text;
    mat(t.embed, nullptr, nullptr);
    for (const auto& L : t.layers) {
        for (const auto* n : {&L.input_norm, &L.post_norm, &L.q_norm, &L.k_norm}) vec(*n);
        for (const auto* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) mat(*w, &f.text_layer_params, &f.text_layer_bytes);
        if (!L.moe) continue;
        mat(L.moe->router, &f.text_layer_params, &f.text_layer_bytes);
        int64_t expert_params = 0, expert_bytes = 0;
        for (const auto& e : L.moe->experts)
            for (const auto* w : {&e.gate, &e.up, &e.down}) mat(*w, &expert_params, &expert_bytes);
        const double chosen = double(m.config.text.num_experts_per_tok) / double(m.config.text.num_experts);
        f.text_layer_params += int64_t(double(expert_params) * chosen);
        f.text_layer_bytes += int64_t(double(expert_bytes) * chosen);
    }
    vec(t.norm);
    f.lm_head_params = t.lm_head.rows * t.lm_head.cols;
    f.lm_head_bytes = matrix_bytes(t.lm_head);
    if (!m.config.tie_word_embeddings) f.params += f.lm_head_params;
    if (t.lm_head.data != t.embed.data) f.bytes += f.lm_head_bytes;  // its own matrix (untied, or a quantized copy)
    return f;
}

// ---- measurements ----

Image gradient_image(int w, int h) {
    Image img;
    img.width = w;
    img.height = h;
    img.rgb.resize(size_t(w) * size_t(h) * 3);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            uint8_t* p = &img.rgb[(size_t(y) * size_t(w) + size_t(x)) * 3];
            p[0] = uint8_t(x * 255 / w);
            p[1] = uint8_t(y * 255 / h);
            p[2] = uint8_t((x + y) * 255 / (w + h));
        }
    return img;
}

std::vector<int> random_ids(const ModelConfig& c, int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> d(0, c.text.vocab_size - 1);
    std::vector<int> ids;
    while (int(ids.size()) < n) {
        const int id = d(rng);
        if (id != c.image_token_id && id != c.video_token_id) ids.push_back(id);
    }
    return ids;
}

struct VisionRun {
    double preprocess_s = 0, encode_s = 0, first_encode_s = 0;  // best of two encodes; the first one
    int64_t patches = 0;
    // The stack schemes' high-resolution stream, encoded with it: its patches, the blocks they run
    // (DeepStack-L: all, then the mergers; DeepStack-V: the first layer_start).
    int64_t highres_patches = 0;
    int highres_blocks = 0;
    bool highres_merged = false;
};

VisionRun run_vision(const Model& m, int side) {
    VisionRun r;
    const Image img = gradient_image(side, side);
    auto t0 = Clock::now();
    const VisualInput in = prepare_image(m, img);
    r.preprocess_s = detail::seconds_since(t0);
    const auto& g = in.patches.grid_thw;
    r.patches = int64_t(g[0]) * g[1] * g[2];
    const FusionConfig& fusion = m.config.vision.fusion;
    if (fusion.has_highres_stream()) {
        const auto& h = in.highres.grid_thw;
        r.highres_patches = int64_t(h[0]) * h[1] * h[2];
        r.highres_merged = fusion.type == FusionConfig::Type::Stack;
        r.highres_blocks = r.highres_merged ? m.config.vision.depth : fusion.layer_start;
    }
    // Two encodes: the first at a new size also grows the per-thread scratch buffers (page faults);
    // the better one is the encoder's speed, the first is printed beside it. The encode is the
    // prompt's whole visual path (the fusion scheme's extra streams included).
    for (int run = 0; run < 2; ++run) {
        t0 = Clock::now();
        const VisualEmbedding e = detail::encode_visuals(m, {in}, {});
        const double s = detail::seconds_since(t0);
        if (e.embeds.empty()) throw Error("vision encoder returned nothing");
        r.encode_s = run == 0 ? s : std::min(r.encode_s, s);
        if (run == 0) r.first_encode_s = s;
    }
    return r;
}

// Tokens/s of an n-token prefill into a new session: the better of two runs (the first at a new
// length also grows the scratch buffers and commits KV cache pages), and the first one.
struct PrefillRun {
    double tok_s = 0, first_tok_s = 0;
};
PrefillRun run_prefill(const std::shared_ptr<const Model>& m, int n) {
    const std::vector<int> ids = random_ids(m->config, n, uint32_t(n));
    PrefillRun r;
    for (int run = 0; run < 2; ++run) {
        Session s(m);
        const auto t0 = Clock::now();
        s.prefill(ids);
        const double tok_s = double(n) / detail::seconds_since(t0);
        r.tok_s = std::max(r.tok_s, tok_s);
        if (run == 0) r.first_tok_s = tok_s;
    }
    return r;
}

// Plain read of the bytes a decode step streams - the decoder matrices and lm_head as held at run
// time (quantized: values and scales; every expert of a mixture-of-experts layer) - split evenly over the threads, best of 3 passes, GB/s.
// Measured right before and right after the decode timing: the host's bandwidth can change by
// 40% within a minute, and a bound measured at another moment could flatter the ratio.
double decode_weights_read_gbps(const Model& m) {
    std::vector<std::pair<const float*, int64_t>> ranges;  // whole 64-float pieces of each matrix
    int64_t total = 0;
    auto add_range = [&](const void* p, int64_t bytes) {
        const int64_t n = bytes / int64_t(sizeof(float)) / 64 * 64;
        if (n > 0) ranges.push_back({static_cast<const float*>(p), n}), total += n;
    };
    auto add_matrix = [&](const Matrix& w) {
        if (w.dtype == DType::Q8 || w.dtype == DType::Q4) {
            const auto& qw = *static_cast<const QuantWeights*>(w.data);
            add_range(qw.q.data(), int64_t(qw.q.size()));
            add_range(qw.scale.data(), int64_t(qw.scale.size() * sizeof(qw.scale[0])));
        } else {
            add_range(w.data, w.rows * w.cols * int64_t(detail::dtype_size(w.dtype)));
        }
    };
    for (const auto& L : m.text.layers) {
        for (const Matrix* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) add_matrix(*w);
        if (!L.moe) continue;
        add_matrix(L.moe->router);
        for (const auto& e : L.moe->experts)
            for (const Matrix* w : {&e.gate, &e.up, &e.down}) add_matrix(*w);
    }
    add_matrix(m.text.lm_head);
    const auto stream_sum = detail::kernels().stream_sum;
    double best = 0, sink = 0;
    for (int pass = 0; pass < 3; ++pass) {
        const auto t0 = Clock::now();
        double sum = 0;
#pragma omp parallel reduction(+ : sum)
        {
            // this thread's share [begin, end) of the concatenated ranges, in floats
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            const int64_t begin = total * t / nt / 64 * 64, end = total * (t + 1) / nt / 64 * 64;
            int64_t at = 0;
            for (const auto& [p, n] : ranges) {
                const int64_t lo = std::max(begin, at) - at, hi = std::min(end, at + n) - at;
                if (hi > lo) sum += stream_sum(p + lo, hi - lo);
                at += n;
            }
        }
        best = std::max(best, double(total) * 4 / detail::seconds_since(t0) / 1e9);
        sink += sum;
    }
    volatile double keep = sink;  // the sums are never read: the volatile store keeps the loads
    (void)keep;
    return best;
}

double run_decode(const std::shared_ptr<const Model>& m, int context, int steps) {
    Session s(m);
    std::vector<float> logits = s.prefill(random_ids(m->config, context, 7));
    const auto t0 = Clock::now();
    for (int i = 0; i < steps; ++i) {
        const int next = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
        logits = s.decode(next == m->config.image_token_id || next == m->config.video_token_id ? 0 : next);
    }
    return double(steps) / detail::seconds_since(t0);
}

// Decode steps of B sequences at once, each at a `context`-token context (copies of one prefilled
// session): the best of 3 timings of `steps` steps, as seconds per step.
double run_decode_batch(const std::shared_ptr<const Model>& m, int context, int steps, int B) {
    Session first(m);
    const std::vector<float> logits = first.prefill(random_ids(m->config, context, 7));
    std::vector<Session> sessions(size_t(B), first);
    std::vector<Session*> ptrs;
    for (auto& s : sessions) ptrs.push_back(&s);
    const int64_t V = m->config.text.vocab_size;
    auto pick = [&](const float* l) {
        const int next = int(std::max_element(l, l + V) - l);
        return next == m->config.image_token_id || next == m->config.video_token_id ? 0 : next;
    };
    std::vector<int> tokens(size_t(B), pick(logits.data()));
    double best = 1e30;
    for (int run = 0; run < 3; ++run) {
        const auto t0 = Clock::now();
        for (int i = 0; i < steps; ++i) {
            const std::vector<float> l = Session::decode_batch(ptrs, tokens);
            for (int b = 0; b < B; ++b) tokens[size_t(b)] = pick(l.data() + b * V);
        }
        best = std::min(best, detail::seconds_since(t0) / steps);
    }
    return best;
}

// A caption-sized request: one 448x448 image and 16 text tokens, then 32 greedy decode steps.
double run_caption(const std::shared_ptr<const Model>& m) {
    const ModelConfig& c = m->config;
    const auto t0 = Clock::now();
    const VisualInput in = prepare_image(*m, gradient_image(448, 448));
    const auto& g = in.patches.grid_thw;
    const int pads = g[0] * g[1] * g[2] / (c.vision.spatial_merge_size * c.vision.spatial_merge_size);
    std::vector<int> ids{c.vision_start_token_id};
    ids.insert(ids.end(), size_t(pads), c.image_token_id);
    ids.push_back(c.vision_end_token_id);
    for (int id : random_ids(c, 16, 3)) ids.push_back(id);
    Session s(m);
    std::vector<float> logits = s.prefill(ids, {in});
    for (int i = 0; i < 32; ++i) logits = s.decode(int(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    return detail::seconds_since(t0);
}

// ---- report ----

struct Report {
    std::string model, weights, compute, simd;
    bool map_weights = false;
    int threads = 0;
    std::string load_before, load_after;
    double gen_s = 0, load_s = 0;
    double gen_in_load_s = 0;  // of load_s: making a synthetic model's tensors on demand
    bool peak_after_load = false;  // --shape: VmHWM reset after the load
    int64_t rss_after_load = 0, rss_after_caption = 0, rss_anon = 0, rss_file = 0, peak_rss = 0;
    Footprint fp;
    double mem_bw = 0, fma_peak = 0, bf16_peak = 0, int8_peak = 0, amx_peak = 0;
    // The peaks that bound the matrix products and the attention (vision, prefill): what each runs on.
    // fp32 FMA in exact mode, except BF16 weights on AMX where usable (a third of its peak: three
    // exact bf16 pieces per activation); fast mode: BF16, Q8 and Q4 weights on AMX where usable (else
    // vdpbf16ps and VNNI int8), attention over 8+ queries on AMX where usable (else vdpbf16ps).
    std::string matrix_unit = "fp32", attention_unit = "fp32";
    double matrix_peak = 0, attention_peak = 0;
    VisionRun v448, v896;
    double vision_448_bound = 0, vision_896_bound = 0;
    double prefill_256 = 0, prefill_1024 = 0, prefill_256_bound = 0, prefill_1024_bound = 0;
    double prefill_256_first = 0, prefill_1024_first = 0;
    // effective rates in GFLOP/s: matrix FLOPs only (2 per weight per patch / token) over the time
    double vision_448_eff = 0, vision_896_eff = 0, prefill_256_eff = 0, prefill_1024_eff = 0;
    double decode = 0, decode_bound = 0, decode_read_bw = 0;  // decode_read_bw: decode_weights_read_gbps, max of before / after
    int decode_steps = 0;
    std::vector<std::pair<int, double>> batch_step_s;  // --batch: (sequences, seconds per step)
    double caption_s = 0;
};

// Matrix FLOPs of a vision run: per patch the patch embedding and the blocks, per merged token the
// mergers; the same for the high-resolution stream over the blocks it runs.
double vision_matrix_flops(const Footprint& f, const VisionConfig& v, const VisionRun& run) {
    const double per_block = double(f.vis_patch_params - f.vis_embed_params) / v.depth;
    auto stream = [&](int64_t S, int blocks, bool merged) {
        return 2.0 * double(S) * (double(f.vis_embed_params) + blocks * per_block) + (merged ? 2.0 * double(S / 4) * double(f.vis_token_params) : 0.0);
    };
    return stream(run.patches, v.depth, true) + stream(run.highres_patches, run.highres_blocks, run.highres_merged);
}
// ... plus attention (QK^T and PV over each stream's patches, one image).
double vision_flops(const Footprint& f, const VisionConfig& v, const VisionRun& run) {
    auto attention = [&](int64_t S, int blocks) { return 4.0 * double(S) * double(S) * v.hidden_size * blocks; };
    return vision_matrix_flops(f, v, run) + attention(run.patches, v.depth) + attention(run.highres_patches, run.highres_blocks);
}

// Matrix FLOPs of a T-token prefill: decoder matrices per token, lm_head for the last token only.
double prefill_matrix_flops(const Footprint& f, int64_t T) {
    return 2.0 * double(T) * double(f.text_layer_params) + 2.0 * double(f.lm_head_params);
}
// ... plus causal attention from an empty cache.
double prefill_flops(const Footprint& f, const TextConfig& t, int64_t T) {
    return prefill_matrix_flops(f, T) + 2.0 * double(T) * double(T) * t.num_attention_heads * t.head_dim * t.num_hidden_layers;
}

// Bytes one decode step reads at context n: decoder matrices, lm_head, the KV cache (kv_bytes per
// value: 4, or 2 for fast mode's bf16 cache).
double decode_bytes(const Footprint& f, const TextConfig& t, int64_t n, int kv_bytes) {
    return double(f.text_layer_bytes + f.lm_head_bytes) + 2.0 * kv_bytes * double(n) * t.num_key_value_heads * t.head_dim * t.num_hidden_layers;
}

std::string gb(int64_t b) {
    char s[32];
    std::snprintf(s, sizeof s, "%.2f GB", double(b) / 1e9);
    return s;
}

void print_table(const Report& r, const Args& a) {
    std::printf("deepstack-bench  model %s%s  weights %s  compute %s  simd %s  threads %d\n", r.model.c_str(), r.map_weights ? " (mapped)" : "", r.weights.c_str(),
                r.compute.c_str(), r.simd.c_str(), r.threads);
    std::printf("load average     before %s  after %s\n", r.load_before.c_str(), r.load_after.c_str());
    std::printf("machine          memory read %.1f GB/s  fp32 FMA peak %.0f GFLOP/s  bf16 dot peak %.0f GFLOP/s", r.mem_bw,
                r.fma_peak, r.bf16_peak);
    if (r.int8_peak > 0) std::printf("  int8 dot peak %.0f GOP/s", r.int8_peak);
    if (r.amx_peak > 0) std::printf("  AMX bf16 peak %.0f GFLOP/s", r.amx_peak);
    std::printf("\n");
    if (r.matrix_peak > 0)
        std::printf("bounds           matrices at the %s peak, attention at the %s peak\n", r.matrix_unit.c_str(), r.attention_unit.c_str());
    std::printf("weights          %.3f B params  %s at run time (%.2f bytes/param); per token %.3f B params, %s\n",
                double(r.fp.params) / 1e9, gb(r.fp.bytes).c_str(), double(r.fp.bytes) / double(r.fp.params),
                double(r.fp.text_layer_params + r.fp.lm_head_params) / 1e9, gb(r.fp.text_layer_bytes + r.fp.lm_head_bytes).c_str());
    if (r.gen_s > 0) std::printf("synthetic        generated in %.2f s\n", r.gen_s);
    std::printf("load             %.2f s", r.load_s);
    if (r.gen_in_load_s > 0) std::printf(" (of which %.2f s making the synthetic tensors)", r.gen_in_load_s);
    std::printf("   RSS after load %s\n", gb(r.rss_after_load).c_str());
    std::printf("peak RSS         %s%s  (at exit: anon %s, file-backed %s)\n", gb(r.peak_rss).c_str(),
                r.peak_after_load ? " after load" : "", gb(r.rss_anon).c_str(), gb(r.rss_file).c_str());
    const char* peak_name = "compute";
    auto effective = [&](double gflops) {
        if (gflops > 0 && r.matrix_peak > 0)
            std::printf("\n                 effective rate (matrices only) %.0f GFLOP/s = %.0f%% of the %s peak", gflops,
                        100 * gflops / r.matrix_peak, r.matrix_unit.c_str());
        if (gflops > 0 && r.matrix_peak > 0 && r.matrix_unit != "fp32" && r.fma_peak > 0)
            std::printf(" (%.0f%% of the fp32 FMA peak)", 100 * gflops / r.fma_peak);
    };
    auto vis = [&](const char* name, const VisionRun& v, double bound, double eff) {
        if (v.encode_s <= 0) return;
        std::printf("%-16s %.2f s (first call %.2f s; %" PRId64 " patches", name, v.encode_s, v.first_encode_s, v.patches);
        if (v.highres_patches > 0) std::printf(" + %" PRId64 " high-resolution through %d blocks", v.highres_patches, v.highres_blocks);
        std::printf(", preprocess %.3f s)", v.preprocess_s);
        if (bound > 0) std::printf("   %s bound %.2f s  -> %.0f%% of peak", peak_name, bound, 100 * bound / v.encode_s);
        effective(eff);
        std::printf("\n");
    };
    if (!a.skip_vision) vis("vision 448x448", r.v448, r.vision_448_bound, r.vision_448_eff);
    if (!a.skip_vision && !a.skip_vision_896) vis("vision 896x896", r.v896, r.vision_896_bound, r.vision_896_eff);
    auto tok = [&](const char* name, double got, double first, double bound, const char* what, double eff) {
        if (got <= 0) return;
        std::printf("%-16s %.1f tok/s", name, got);
        if (first > 0) std::printf(" (first call %.1f)", first);
        if (bound > 0) std::printf("   %s bound %.1f tok/s  -> %.0f%%", what, bound, 100 * got / bound);
        effective(eff);
        std::printf("\n");
    };
    tok("prefill 256", r.prefill_256, r.prefill_256_first, r.prefill_256_bound, peak_name, r.prefill_256_eff);
    tok("prefill 1024", r.prefill_1024, r.prefill_1024_first, r.prefill_1024_bound, peak_name, r.prefill_1024_eff);
    tok("decode @256", r.decode, 0, r.decode_bound, "bandwidth", 0);
    if (r.decode > 0 && r.decode_read_bw > 0)
        std::printf("                 (bound at %.1f GB/s: plain read of the decode's weights just before/after it %.1f GB/s)\n",
                    std::max(r.mem_bw, r.decode_read_bw), r.decode_read_bw);
    for (const auto& [B, step_s] : r.batch_step_s) {
        const auto& [B0, step0_s] = r.batch_step_s.front();  // the first count given
        std::printf("decode x%-3d      %.1f ms/step  %.1f tok/s aggregate  (%.2fx that of %d)\n", B, step_s * 1e3, B / step_s,
                    (B / step_s) / (B0 / step0_s), B0);
    }
    if (r.caption_s > 0)
        std::printf("caption          %.2f s (448x448 image, 16 text tokens, 32 new tokens)   RSS after it %s\n", r.caption_s,
                    gb(r.rss_after_caption).c_str());
}

void print_json(const Report& r) {
    nlohmann::json j = {
        {"model", r.model}, {"map_weights", r.map_weights}, {"weights", r.weights}, {"compute", r.compute}, {"simd", r.simd}, {"threads", r.threads},
        {"load_average_before", r.load_before}, {"load_average_after", r.load_after},
        {"params", r.fp.params}, {"weight_bytes", r.fp.bytes},
        {"active_params_per_token", r.fp.text_layer_params + r.fp.lm_head_params},
        {"weight_bytes_per_param", double(r.fp.bytes) / double(r.fp.params)},
        {"load_s", r.load_s}, {"rss_after_load_bytes", r.rss_after_load}, {"peak_rss_bytes", r.peak_rss},
        {"rss_anon_bytes", r.rss_anon}, {"rss_file_bytes", r.rss_file},
        {"mem_bw_gbps", r.mem_bw}, {"fma_peak_gflops", r.fma_peak}, {"bf16_peak_gflops", r.bf16_peak},
        {"int8_peak_gops", r.int8_peak}, {"amx_bf16_peak_gflops", r.amx_peak},
        {"matrix_peak_unit", r.matrix_unit}, {"attention_peak_unit", r.attention_unit},
        {"vision_448_s", r.v448.encode_s}, {"vision_448_first_s", r.v448.first_encode_s}, {"vision_448_bound_s", r.vision_448_bound},
        {"vision_896_s", r.v896.encode_s}, {"vision_896_first_s", r.v896.first_encode_s}, {"vision_896_bound_s", r.vision_896_bound},
        {"prefill_256_tok_s", r.prefill_256}, {"prefill_256_first_tok_s", r.prefill_256_first}, {"prefill_256_bound_tok_s", r.prefill_256_bound},
        {"prefill_1024_tok_s", r.prefill_1024}, {"prefill_1024_first_tok_s", r.prefill_1024_first}, {"prefill_1024_bound_tok_s", r.prefill_1024_bound},
        {"vision_448_effective_gflops", r.vision_448_eff}, {"vision_896_effective_gflops", r.vision_896_eff},
        {"prefill_256_effective_gflops", r.prefill_256_eff}, {"prefill_1024_effective_gflops", r.prefill_1024_eff},
        {"decode_tok_s", r.decode}, {"decode_bound_tok_s", r.decode_bound}, {"decode_steps", r.decode_steps},
        {"decode_weights_read_gbps", r.decode_read_bw}};
    if (r.gen_s > 0) j["synthetic_gen_s"] = r.gen_s, j["peak_rss_after_load"] = r.peak_after_load;
    if (r.gen_in_load_s > 0) j["synthetic_gen_in_load_s"] = r.gen_in_load_s;
    if (r.caption_s > 0) j["caption_s"] = r.caption_s, j["rss_after_caption_bytes"] = r.rss_after_caption;
    for (const auto& [B, step_s] : r.batch_step_s) j["batch_decode"].push_back({{"sequences", B}, {"step_s", step_s}, {"tok_s", B / step_s}});
    std::printf("%s\n", j.dump().c_str());
}

Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string s = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw Error("option " + s + " needs a value\n" + kUsage);
            return argv[++i];
        };
        if (s == "--help" || s == "-h") { std::fputs(kUsage, stdout); std::exit(0); }
        else if (s == "--shape") a.shape = value();
        else if (s == "--model") a.model_dir = value();
        else if (s == "--write") a.write_dir = value();
        else if (s == "--weights") a.weights = value();
        else if (s == "--compute") a.compute = value();
        else if (s == "--threads") a.threads = std::stoi(value());
        else if (s == "--decode-steps") a.decode_steps = std::stoi(value());
        else if (s == "--json") a.json = true;
        else if (s == "--batch") {
            const std::string list = value();
            for (size_t at = 0; at <= list.size();) {
                const size_t end = std::min(list.find(',', at), list.size());
                const std::string item = list.substr(at, end - at);
                if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 3 || std::stoi(item) < 1)
                    throw Error("--batch takes sequence counts like 1,2,4,8 (each 1..999), got '" + list + "'");
                a.batches.push_back(std::stoi(item));
                at = end + 1;
            }
        }
        else if (s == "--caption") a.caption = true;
        else if (s == "--skip-vision") a.skip_vision = true;
        else if (s == "--skip-vision-896") a.skip_vision_896 = true;
        else if (s == "--skip-prefill") a.skip_prefill = true;
        else if (s == "--skip-prefill-1024") a.skip_prefill_1024 = true;
        else if (s == "--skip-decode") a.skip_decode = true;
        else if (s == "--skip-peaks") a.skip_peaks = true;
        else if (s == "--map-weights") a.map_weights = true;
        else throw Error("unknown argument '" + s + "'\n" + kUsage);
    }
    if (a.shape.empty() == a.model_dir.empty()) throw Error(std::string("give exactly one of --shape and --model\n") + kUsage);
    if (!a.write_dir.empty() && a.shape.empty()) throw Error("--write needs --shape");
    if (a.weights != "bf16" && a.weights != "int8" && a.weights != "q4") throw Error("--weights must be bf16, int8 or q4");
    if (a.compute != "f32" && a.compute != "bf16") throw Error("--compute must be f32 or bf16");
    if (a.decode_steps <= 0) throw Error("--decode-steps must be positive");
    return a;
}

int run(int argc, char** argv) {
    const Args a = parse_args(argc, argv);
#ifdef _OPENMP
    if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
    Report r;
    r.weights = a.weights;
    r.compute = a.compute;
    r.map_weights = a.map_weights;
    r.simd = isa_name(active_isa());
    r.threads = max_threads();
    r.load_before = load_average();

    LoadOptions opt;
    opt.weights = a.weights == "int8" ? WeightFormat::Q8 : a.weights == "q4" ? WeightFormat::Q4 : WeightFormat::Stored;
    opt.bf16_compute = a.compute == "bf16";
    opt.map_weights = a.map_weights;
    if (!a.write_dir.empty()) {
        const nlohmann::json cfg_json = synthetic_config(shape_spec(a.shape));
        progress("writing the synthetic %s model to %s", a.shape.c_str(), a.write_dir.c_str());
        write_synthetic(a.write_dir, cfg_json, synthetic_tensors(parse_model_config(cfg_json, "--shape " + a.shape)));
        return 0;
    }
    if (!a.skip_peaks) {
        progress("measuring memory bandwidth and compute peaks");
        r.mem_bw = memory_bandwidth_gbps();
        r.fma_peak = fma_peak_gflops();
        r.bf16_peak = bf16_peak_gflops();
        r.int8_peak = int8_peak_gflops();
        r.amx_peak = amx_peak_gflops();
    }
    // The bandwidth buffer is gone; restart the peak-RSS count so it measures the model only.
    if (!(std::ofstream("/proc/self/clear_refs") << "5")) progress("warning: cannot reset VmHWM; peak RSS includes the 1 GiB bandwidth buffer");

    std::shared_ptr<const Model> model;
    if (!a.shape.empty()) {
        const nlohmann::json cfg_json = synthetic_config(shape_spec(a.shape));
        const ModelConfig cfg = parse_model_config(cfg_json, "--shape " + a.shape);
        const std::vector<TensorSpec> tensors = synthetic_tensors(cfg);
        const bool on_demand = made_on_demand(tensors);
        if (on_demand && opt.weights == WeightFormat::Stored)
            throw Error("--shape " + a.shape + ": " + gb(synthetic_bytes(tensors)) +
                        " of bf16 weights do not fit in this machine's memory; use --weights int8 or q4");
        progress(on_demand ? "synthetic Qwen3-VL-%s weights: made tensor by tensor during the load" : "generating synthetic Qwen3-VL-%s weights",
                 a.shape.c_str());
        auto t0 = Clock::now();
        WeightStore ws;
        const auto making_s = std::make_shared<double>(0.0);  // made on demand: the share of the load
        add_synthetic(ws, tensors, "synthetic-" + a.shape, making_s);
        r.gen_s = detail::seconds_since(t0);
        progress("loading");
        t0 = Clock::now();
        // (a missing preprocessor file gives the Qwen3-VL defaults)
        model = Model::from_store(cfg, load_preprocess_config("", false), load_preprocess_config("", true), std::move(ws),
                                  "synthetic-" + a.shape, opt);
        r.load_s = detail::seconds_since(t0);
        r.gen_in_load_s = *making_s;
        r.model = "synthetic Qwen3-VL-" + a.shape;
        // The synthetic bf16 image was whole in memory until the load quantized and released it
        // (--weights int8 / q4), which a checkpoint's mapped file is not: the peak counts from here.
        // A model made on demand never is, and its peak includes the load.
        if (!on_demand) {
            r.peak_after_load = bool(std::ofstream("/proc/self/clear_refs") << "5");
            if (!r.peak_after_load) progress("warning: cannot reset VmHWM; peak RSS includes the synthetic bf16 image");
        }
    } else {
        progress("loading %s", a.model_dir.c_str());
        const auto t0 = Clock::now();
        model = Model::load(a.model_dir, opt);
        r.load_s = detail::seconds_since(t0);
        r.model = a.model_dir;
    }
    r.rss_after_load = proc_status_bytes("VmRSS");
    const ModelConfig& c = model->config;
    r.fp = footprint(*model);

    progress("warm-up (one token)");
    run_prefill(model, 1);
    if (!a.skip_vision) {
        progress("vision 448x448");
        r.v448 = run_vision(*model, 448);
        if (!a.skip_vision_896) {
            progress("vision 896x896");
            r.v896 = run_vision(*model, 896);
        }
    }
    if (!a.skip_prefill) {
        progress("prefill 256");
        const PrefillRun p = run_prefill(model, 256);
        r.prefill_256 = p.tok_s;
        r.prefill_256_first = p.first_tok_s;
        if (!a.skip_prefill_1024) {
            progress("prefill 1024");
            const PrefillRun p = run_prefill(model, 1024);
            r.prefill_1024 = p.tok_s;
            r.prefill_1024_first = p.first_tok_s;
        }
    }
    if (!a.skip_decode) {
        progress("decode: prefill 256, then %d steps", a.decode_steps);
        if (!a.skip_peaks) r.decode_read_bw = decode_weights_read_gbps(*model);
        r.decode = run_decode(model, 256, a.decode_steps);
        if (!a.skip_peaks) r.decode_read_bw = std::max(r.decode_read_bw, decode_weights_read_gbps(*model));
        r.decode_steps = a.decode_steps;
    }
    for (int B : a.batches) {
        progress("batched decode: %d sequences at a 256-token context, %d steps (best of 3)", B, a.decode_steps);
        r.batch_step_s.push_back({B, run_decode_batch(model, 256, a.decode_steps, B)});
    }
    if (a.caption) {
        progress("caption-sized run");
        r.caption_s = run_caption(model);
        r.rss_after_caption = proc_status_bytes("VmRSS");
    }
    r.peak_rss = peak_rss_bytes();
    r.rss_anon = proc_status_bytes("RssAnon");
    r.rss_file = proc_status_bytes("RssFile");
    r.load_after = load_average();
    if (!a.skip_peaks) {
        // The limits again, after the runs: on a shared host they drift by tens of percent within
        // minutes, and a limit measured in a slow moment would flatter every ratio. The best of the
        // two measurements is the bound.
        progress("measuring the limits again");
        r.mem_bw = std::max(r.mem_bw, memory_bandwidth_gbps());
        r.fma_peak = std::max(r.fma_peak, fma_peak_gflops());
        r.bf16_peak = std::max(r.bf16_peak, bf16_peak_gflops());
        r.int8_peak = std::max(r.int8_peak, int8_peak_gflops());
        r.amx_peak = std::max(r.amx_peak, amx_peak_gflops());
    }
    // Bounds need the machine limits; with --skip-peaks they stay 0 and are not printed. Matrices and
    // attention each at the peak of the instructions they run on.
    auto set_unit = [](std::string& unit, double& peak, const char* name, double value) {
        if (value > 0) unit = name, peak = value;
    };
    r.matrix_peak = r.attention_peak = r.fma_peak;
    const bool amx_exact = a.compute != "bf16" && r.amx_peak > 0 && model->text.layers[0].q.dtype == DType::BF16 && detail::exact_gemm_on_amx();
    if (amx_exact) set_unit(r.matrix_unit, r.matrix_peak, "AMX bf16 / 3", r.amx_peak / 3);  // three exact pieces per activation
    if (a.compute == "bf16") {
        const bool amx = r.amx_peak > 0;  // measured only where AMX is usable
        const char* bf16_unit = amx ? "AMX bf16" : "bf16 dot";
        const double bf16_peak = amx ? r.amx_peak : r.bf16_peak;
        const DType wt = model->text.layers[0].q.dtype;
        if (wt == DType::Q8 || wt == DType::Q4) set_unit(r.matrix_unit, r.matrix_peak, amx ? bf16_unit : "int8 dot", amx ? bf16_peak : r.int8_peak);
        else if (wt == DType::BF16) set_unit(r.matrix_unit, r.matrix_peak, bf16_unit, bf16_peak);
        set_unit(r.attention_unit, r.attention_peak, bf16_unit, bf16_peak);
    }
    auto seconds_bound = [&](double matrix_flops, double flops) {
        return r.matrix_peak > 0 ? (matrix_flops / r.matrix_peak + (flops - matrix_flops) / r.attention_peak) / 1e9 : 0.0;
    };
    auto rate_bound = [&](double n, double matrix_flops, double flops) { return r.matrix_peak > 0 ? n / seconds_bound(matrix_flops, flops) : 0.0; };
    if (r.v448.patches > 0)
        r.vision_448_bound = seconds_bound(vision_matrix_flops(r.fp, c.vision, r.v448), vision_flops(r.fp, c.vision, r.v448));
    if (r.v896.patches > 0)
        r.vision_896_bound = seconds_bound(vision_matrix_flops(r.fp, c.vision, r.v896), vision_flops(r.fp, c.vision, r.v896));
    if (r.prefill_256 > 0) r.prefill_256_bound = rate_bound(256, prefill_matrix_flops(r.fp, 256), prefill_flops(r.fp, c.text, 256));
    if (r.prefill_1024 > 0) r.prefill_1024_bound = rate_bound(1024, prefill_matrix_flops(r.fp, 1024), prefill_flops(r.fp, c.text, 1024));
    if (r.v448.encode_s > 0) r.vision_448_eff = vision_matrix_flops(r.fp, c.vision, r.v448) / r.v448.encode_s / 1e9;
    if (r.v896.encode_s > 0) r.vision_896_eff = vision_matrix_flops(r.fp, c.vision, r.v896) / r.v896.encode_s / 1e9;
    r.prefill_256_eff = prefill_matrix_flops(r.fp, 256) * r.prefill_256 / 256 / 1e9;
    r.prefill_1024_eff = prefill_matrix_flops(r.fp, 1024) * r.prefill_1024 / 1024 / 1e9;
    // The decode bound takes the best bandwidth seen: the machine's read at the start and the end,
    // and the plain read of the decode's own weights just before and after it (0 without peaks).
    const int kv_bytes = detail::kv_cache_bf16(model->text.compute) ? 2 : 4;
    if (r.decode > 0) r.decode_bound = std::max(r.mem_bw, r.decode_read_bw) * 1e9 / decode_bytes(r.fp, c.text, 256 + a.decode_steps / 2, kv_bytes);
    if (a.json)
        print_json(r);
    else
        print_table(r, a);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
