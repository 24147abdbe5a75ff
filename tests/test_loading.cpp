#include <doctest/doctest.h>
#include <deepstack.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "test_util.hpp"

using namespace deepstack;
using namespace deepstack::detail;

TEST_CASE("config.json of the fixtures parses") {
    auto c = load_model_config(kData + "/fixtures/tiny-image/model/config.json");
    CHECK(c.text.hidden_size == 64);
    CHECK(c.text.head_dim == 32);
    CHECK(c.text.mrope_section == std::array<int, 3>{6, 5, 5});
    CHECK(c.vision.deepstack_visual_indexes == std::vector<int>{1, 2});
    CHECK(c.tie_word_embeddings);
    CHECK(c.image_token_id == 505);
    auto s = load_model_config(kData + "/fixtures/tiny-stack/model/config.json");
    CHECK(s.vision.fusion.type == FusionConfig::Type::Stack);
    CHECK(s.vision.fusion.scale == 2);
}

TEST_CASE("safetensors of the fixtures map and validate") {
    auto ws = WeightStore::open_folder(kData + "/fixtures/tiny-video-4raw/model");
    const auto& t = ws.get("model.visual.patch_embed.proj.weight", {32, 3, 2, 16, 16});
    CHECK(t.dtype == DType::BF16);
    CHECK_THROWS_WITH_AS(ws.get("model.visual.patch_embed.proj.weight", {32, 1536}),
                         doctest::Contains("has shape [32, 3, 2, 16, 16], expected [32, 1536]"), Error);
    CHECK_THROWS_WITH_AS(ws.get("nope", {1}), doctest::Contains("missing tensor 'nope'"), Error);
}

TEST_CASE("weights read into memory and mapped hold the same bytes and give the same logits") {
    const std::string dir = kData + "/fixtures/tiny-video-4raw/model";
    const WeightStore mapped = WeightStore::open_folder(dir, FileAccess::Map), read = WeightStore::open_folder(dir, FileAccess::Read);
    REQUIRE(mapped.tensors().size() == read.tensors().size());
    for (const auto& [name, t] : mapped.tensors()) {
        CAPTURE(name);
        const TensorInfo* r = read.find(name);
        REQUIRE(r != nullptr);
        CHECK(r->data != t.data);
        CHECK(r->shape == t.shape);
        CHECK(std::memcmp(r->data, t.data, t.nbytes) == 0);
    }
    const std::vector<int> ids = {1, 2, 3, 4, 5};
    LoadOptions as_mapped;
    as_mapped.map_weights = true;
    auto mapped_model = Model::load(dir, as_mapped), read_model = Model::load(dir);
    // Read in, the decoder's BF16 matrices are rewritten as row tiles (Matrix::tile_rows); mapped,
    // they stay row-major. Both give the same logits to the bit: prefill (GEMM) and one token (GEMV).
    for (const auto* m : {&read_model->text.layers[0].q, &read_model->text.layers[1].down, &read_model->text.lm_head})
        CHECK(m->tile_rows == kTileRows);
    CHECK(read_model->text.embed.tile_rows == 0);  // untied here: the embedding is only read by rows
    CHECK(mapped_model->text.layers[0].q.tile_rows == 0);
    Session a(mapped_model), b(read_model);
    const std::vector<float> want = a.prefill(ids);
    CHECK(b.prefill(ids) == want);
    CHECK(b.prefill({7}) == a.prefill({7}));
    LoadOptions fast, fast_mapped;
    fast.bf16_compute = fast_mapped.bf16_compute = fast_mapped.map_weights = true;
    const auto fast_mapped_model = Model::load(dir, fast_mapped), fast_model = Model::load(dir, fast);
    Session fa(fast_mapped_model), fb(fast_model);
    CHECK(fb.prefill(ids) == fa.prefill(ids));
    CHECK(fb.prefill({7}) == fa.prefill({7}));
    // Read in for fast mode with AVX-512 BF16, the vision tower's BF16 matrices are rewritten as pair
    // panels (Matrix::panel_rows), which its GEMM reads in place: the same features to the bit.
    const int want_panels = detail::has_bf16_dot_products() || detail::exact_gemm_on_amx() ? kPanelRows : 0;
    for (const auto* m : {&fast_model->vision.patch_embed.w, &fast_model->vision.blocks[0].qkv.w, &fast_model->vision.merger.fc1.w})
        CHECK(m->panel_rows == want_panels);
    CHECK(fast_mapped_model->vision.blocks[0].qkv.w.panel_rows == 0);
    // Exact mode panels them too where its GEMMs run on AMX tiles (which read them in place).
    CHECK(read_model->vision.blocks[0].qkv.w.panel_rows == (detail::exact_gemm_on_amx() ? kPanelRows : 0));
    Image img;
    img.width = img.height = 64;
    img.rgb.resize(64 * 64 * 3);
    for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = uint8_t(i * 7 % 251);
    const VisualInput in = prepare_image(*fast_model, img);
    const VisionFeatures va = encode_vision(fast_mapped_model->vision, fast_mapped_model->config.vision, in.patches.pixels.data(), {in.patches.grid_thw});
    const VisionFeatures vb = encode_vision(fast_model->vision, fast_model->config.vision, in.patches.pixels.data(), {in.patches.grid_thw});
    CHECK(vb.embeds == va.embeds);
    CHECK(vb.deepstack == va.deepstack);
    const VisionFeatures ea = encode_vision(mapped_model->vision, mapped_model->config.vision, in.patches.pixels.data(), {in.patches.grid_thw});
    const VisionFeatures eb = encode_vision(read_model->vision, read_model->config.vision, in.patches.pixels.data(), {in.patches.grid_thw});
    CHECK(eb.embeds == ea.embeds);
    CHECK(eb.deepstack == ea.deepstack);
    // A quantized load releases the stored pages of the matrices it replaced; the (tied) embedding
    // rows are still read from the mapping afterwards.
    LoadOptions q8;
    q8.weights = WeightFormat::Q8;
    Session c(Model::load(dir, q8));
    const std::vector<float> logits = c.prefill(ids);
    float worst = 0, largest = 0;
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(logits[i] - want[i])), largest = std::max(largest, std::abs(want[i]));
    CHECK(worst <= 0.03f * largest);
}

// The model in `dir` built from a safetensors image made in memory (add_generated) holding its
// checkpoint's bytes.
static std::shared_ptr<const Model> generated_model(const std::string& dir, const LoadOptions& opt) {
    std::ifstream in(dir + "/model.safetensors", std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const uint64_t header_len = detail::safetensors_header_length(reinterpret_cast<const uint8_t*>(bytes.data()));
    const std::string header = bytes.substr(0, size_t(8 + header_len));
    WeightStore ws;
    ws.add_generated("generated", header, bytes.size() - header.size(), [&](uint8_t* data) {
        CHECK(reinterpret_cast<uintptr_t>(data) % 64 == 0);  // the data area on a 64-byte line
        std::memcpy(data, bytes.data() + header.size(), bytes.size() - header.size());
    });
    return Model::from_store(load_model_config(dir + "/config.json"), load_preprocess_config(dir + "/preprocessor_config.json", false),
                             load_preprocess_config(dir + "/video_preprocessor_config.json", true), std::move(ws), "generated", opt);
}

TEST_CASE("a safetensors image made in memory (add_generated) is held and re-ordered like a file read in") {
    const std::string dir = kData + "/fixtures/tiny-video-4raw/model";
    const auto generated = generated_model(dir, {}), read = Model::load(dir);
    CHECK(generated->text.layers[0].q.tile_rows == kTileRows);  // owned: re-ordered as a file read in
    Session a(read), b(generated);
    const std::vector<int> ids = {1, 2, 3, 4, 5};
    CHECK(b.prefill(ids) == a.prefill(ids));
    LoadOptions fast;
    fast.bf16_compute = true;
    if (detail::has_bf16_dot_products()) CHECK(generated_model(dir, fast)->vision.blocks[0].qkv.w.panel_rows == kPanelRows);
    WeightStore failing;  // a fill that throws: the buffer is freed, the error passes through
    CHECK_THROWS_WITH(failing.add_generated("generated", std::string(8, '\0'), 4096, [](uint8_t*) { throw Error("fill failed"); }),
                      "fill failed");
}

// Whether the page holding p is resident.
static bool resident(const void* p) {
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    unsigned char in_core = 0;
    REQUIRE(::mincore(reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~(page - 1)), page, &in_core) == 0);
    return in_core & 1;
}

// Whether this process's page table maps the page holding p (/proc/self/pagemap, bit 63): for a
// file mapping, mincore tells the page cache, this tells the process's resident set.
static bool mapped_in(const void* p) {
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const int fd = ::open("/proc/self/pagemap", O_RDONLY);
    REQUIRE(fd >= 0);
    uint64_t entry = 0;
    const ssize_t got = ::pread(fd, &entry, 8, off_t(reinterpret_cast<uintptr_t>(p) / page * 8));
    ::close(fd);
    REQUIRE(got == 8);
    return (entry >> 63) & 1;
}

// The VmFlags of the mapping holding p (/proc/self/smaps), e.g. "rd mr mw me ac nh".
static std::string vma_flags(const void* p) {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    const auto at = reinterpret_cast<uintptr_t>(p);
    while (std::getline(smaps, line)) {
        unsigned long lo = 0, hi = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2) inside = at >= lo && at < hi;  // a mapping's first line
        else if (inside && line.rfind("VmFlags:", 0) == 0) return line.substr(8);
    }
    return "";
}

TEST_CASE("a quantized load gives back the pages of the matrices it replaced, also in memory the store owns") {
    // tiny-image ties lm_head to the embedding: its bytes stay, the embedding still reads them
    const std::string dir = kData + "/fixtures/tiny-image/model";
    REQUIRE(load_model_config(dir + "/config.json").tie_word_embeddings);
    for (const WeightFormat format : {WeightFormat::Q8, WeightFormat::Q4}) {
        CAPTURE(int(format));
        LoadOptions opt;
        opt.weights = format;
        const auto generated = generated_model(dir, opt), mapped = Model::load(dir, opt);
        const TensorInfo* gate = generated->store.find("model.language_model.layers.0.mlp.gate_proj.weight");
        const TensorInfo* fc1 = generated->store.find("model.visual.blocks.0.mlp.linear_fc1.weight");
        REQUIRE((gate && fc1));
        REQUIRE(gate->nbytes >= size_t(2 * ::sysconf(_SC_PAGESIZE)));  // holds at least one whole page
        CHECK_FALSE(resident(gate->data + gate->nbytes / 2));
        CHECK_FALSE(resident(fc1->data + fc1->nbytes / 2));
        // and stay so: out of the huge pages khugepaged would rebuild (filling them again) within seconds
        CHECK(vma_flags(gate->data + gate->nbytes / 2).find(" nh") != std::string::npos);
        const Matrix& embed = generated->text.embed;
        CHECK(resident(static_cast<const uint8_t*>(embed.data) + embed.rows * embed.cols * detail::dtype_size(embed.dtype) / 2));
        // mapped, the tied embedding's pages leave the resident set too (quantizing lm_head read
        // them all); rows come back from the file as tokens use them
        const Matrix& mapped_embed = mapped->text.embed;
        const auto* mid = static_cast<const uint8_t*>(mapped_embed.data) + mapped_embed.rows * mapped_embed.cols * detail::dtype_size(mapped_embed.dtype) / 2;
        CHECK_FALSE(mapped_in(mid));
        const TensorInfo* mapped_gate = mapped->store.find("model.language_model.layers.0.mlp.gate_proj.weight");
        CHECK_FALSE(mapped_in(mapped_gate->data + mapped_gate->nbytes / 2));
        // the same logits as the mapped load's, to the bit: prefill and one decoded token, with
        // embedding rows from all over the table
        Session a(mapped), b(generated);
        const std::vector<int> ids = {3, 120, 260, 400, 480};
        CHECK(b.prefill(ids) == a.prefill(ids));
        CHECK(b.prefill({300}) == a.prefill({300}));
    }
}

TEST_CASE("a file read into memory has its data area on a 64-byte line whatever the header length") {
    // header lengths giving data areas at 8 + len = 40, 8 and 63 mod 64; 1.5 MiB of data so that the
    // buffer is in 2 MiB pages (made read-only whole)
    for (const size_t pad : {size_t(0), size_t(32), size_t(55)}) {
        CAPTURE(pad);
        const int64_t n = 768 * 1024;  // bf16 values
        nlohmann::json h;
        h["w"] = {{"dtype", "BF16"}, {"shape", {n}}, {"data_offsets", {0, 2 * n}}};
        std::string header = h.dump();
        header += std::string((64 - (8 + header.size()) % 64 + 40 + pad) % 64, ' ');
        const std::string path = "/tmp/deepstack-test-align-" + std::to_string(::getpid()) + ".safetensors";
        {
            std::ofstream out(path, std::ios::binary);
            uint8_t len[8];
            for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
            out.write(reinterpret_cast<const char*>(len), 8);
            out << header;
            for (int64_t i = 0; i < n; ++i) {
                const uint16_t v = uint16_t(i * 40503u);
                out.put(char(v & 0xff)).put(char(v >> 8));
            }
        }
        CHECK((8 + header.size()) % 64 == (40 + pad) % 64);
        WeightStore read, mapped;
        read.add_file(path, FileAccess::Read);
        mapped.add_file(path, FileAccess::Map);
        const TensorInfo* r = read.find("w");
        const TensorInfo* m = mapped.find("w");
        REQUIRE(r != nullptr);
        REQUIRE(m != nullptr);
        CHECK(reinterpret_cast<uintptr_t>(r->data) % 64 == 0);
        CHECK(std::memcmp(r->data, m->data, size_t(2 * n)) == 0);
        std::remove(path.c_str());
    }
}

TEST_CASE("a file read into memory that is shorter than its header says is refused") {
    CHECK_THROWS_WITH_AS(detail::MappedFile("/nonexistent/model.safetensors", FileAccess::Read),
                         doctest::Contains("/nonexistent/model.safetensors: cannot open"), Error);
    const std::string path = "/tmp/deepstack-test-read-" + std::to_string(::getpid()) + ".bin";
    {
        std::ofstream out(path, std::ios::binary);
        out << std::string(5000, 'x');
    }
    const detail::MappedFile f(path, FileAccess::Read);
    CHECK(f.size() == 5000);
    CHECK(f.data()[4999] == 'x');
    CHECK(!f.is_mapping());
    std::remove(path.c_str());
}

TEST_CASE("a safetensors image made on demand writes each tensor when the load first asks for it") {
    // the mixture-of-experts fixture, whose fused expert tensors are asked for one layer at a time
    const std::string dir = kData + "/fixtures/tiny-moe/model";
    std::ifstream in(dir + "/model.safetensors", std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t header = size_t(8 + detail::safetensors_header_length(reinterpret_cast<const uint8_t*>(bytes.data())));
    const nlohmann::json offsets = nlohmann::json::parse(bytes.substr(8, header - 8));
    for (const WeightFormat format : {WeightFormat::Stored, WeightFormat::Q4}) {
        CAPTURE(int(format));
        WeightStore ws;
        std::vector<std::string> made;
        ws.add_generated_on_demand("on demand", bytes.substr(0, header), bytes.size() - header, [&](const TensorInfo& t, uint8_t* data) {
            made.push_back(t.name);
            std::memcpy(data, bytes.data() + header + offsets.at(t.name).at("data_offsets")[0].get<size_t>(), t.nbytes);
        });
        const std::string experts = "model.language_model.layers.2.mlp.experts.gate_up_proj";
        const TensorInfo* t = ws.find(experts);
        REQUIRE(t);
        CHECK(made.empty());  // nothing written yet
        LoadOptions opt;
        opt.weights = format;
        const auto on_demand = Model::from_store(load_model_config(dir + "/config.json"), load_preprocess_config("", false),
                                                 load_preprocess_config("", true), std::move(ws), "on demand", opt);
        CHECK(made.size() == offsets.size() - (offsets.contains("__metadata__") ? 1 : 0));  // every tensor, once
        CHECK(std::find(made.begin(), made.end(), experts) != made.end());
        // the experts are re-laid at load: their fused tensors' pages are given back
        CHECK_FALSE(resident(t->data + t->nbytes / 2));
        Session a(Model::load(dir, opt)), b(on_demand);
        const std::vector<int> ids = {3, 120, 260, 400, 480};
        CHECK(b.prefill(ids) == a.prefill(ids));
    }
}
