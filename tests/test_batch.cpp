// Batched decoding: Session::decode_batch runs one decode step of several sessions in one pass
// over the weights; each session must get exactly the logits (bits) it gets decoded on its own, in
// every compute mode and weight format, whatever the other sessions' lengths and positions. The
// DecodeBatcher and the Engine on top of it: replies generated on several threads at once decode
// in shared steps and are exactly the replies of one-by-one calls, also when one stops early
// through its callback and others fail.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack.hpp>

#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

using namespace deepstack;
using namespace deepstack::detail;

// The test programs are built together: this file's names stay in its own namespace.
namespace batch_tests {

const std::string kTinyMoe = kData + "/fixtures/tiny-moe";

int argmax(const float* v, int64_t n) { return int(std::max_element(v, v + n) - v); }

// Sessions of different lengths and positions: the golden prompt with its image (M-RoPE positions
// ahead of the length), then text prompts of 1 .. count - 1 tokens.
std::vector<Session> prefilled_sessions(const std::shared_ptr<const Model>& m, const std::string& fixture, int count,
                                        std::vector<std::vector<float>>& first_logits) {
    std::vector<Session> sessions;
    first_logits.clear();
    for (int i = 0; i < count; ++i) {
        sessions.emplace_back(m);
        if (i == 0) {
            const VisualInput img = prepare_image(*m, load_image(fixture + "/inputs/image0_80x56.png"));
            first_logits.push_back(sessions.back().prefill(golden_input_ids(fixture), {img}));
        } else {
            std::vector<int> ids;
            for (int k = 0; k < i; ++k) ids.push_back(20 + (37 * i + 11 * k) % 400);
            first_logits.push_back(sessions.back().prefill(ids));
        }
    }
    return sessions;
}

// `steps` greedy steps of `count` sessions, one by one and batched; at the second step the second
// session is fed the image pad token (a generated pad token is text to the decoder).
void check_batch_matches_alone(const std::string& fixture, const LoadOptions& opt, int count, int steps) {
    const auto m = Model::load(fixture + "/model", opt);
    const int64_t V = m->config.text.vocab_size;
    std::vector<std::vector<float>> first_alone, first_batch;
    std::vector<Session> alone = prefilled_sessions(m, fixture, count, first_alone);
    std::vector<Session> batch = prefilled_sessions(m, fixture, count, first_batch);
    REQUIRE(first_alone == first_batch);
    std::vector<int> next(static_cast<size_t>(count), 0);
    for (int i = 0; i < count; ++i) next[size_t(i)] = argmax(first_alone[size_t(i)].data(), V);
    for (int step = 0; step < steps; ++step) {
        if (step == 1) next[1] = m->config.image_token_id;
        std::vector<float> want(size_t(count * V));
        for (int i = 0; i < count; ++i) {
            const std::vector<float> l = alone[size_t(i)].decode(next[size_t(i)]);
            std::copy(l.begin(), l.end(), want.begin() + i * V);
        }
        std::vector<Session*> ptrs;
        for (auto& s : batch) ptrs.push_back(&s);
        const std::vector<float> got = Session::decode_batch(ptrs, next);
        INFO("step " << step << " of " << count << " sessions");
        REQUIRE(got.size() == want.size());
        for (int i = 0; i < count; ++i) {
            INFO("session " << i);
            CHECK(std::memcmp(got.data() + i * V, want.data() + i * V, size_t(V) * sizeof(float)) == 0);
            CHECK(batch[size_t(i)].length() == alone[size_t(i)].length());
            CHECK(batch[size_t(i)].next_position() == alone[size_t(i)].next_position());
            next[size_t(i)] = argmax(want.data() + i * V, V);
        }
    }
}

LoadOptions options(WeightFormat weights, bool fast) {
    LoadOptions o;
    o.weights = weights;
    o.bf16_compute = fast;
    return o;
}

TEST_CASE("decode_batch: each session gets the bits of its own decode (exact, stored weights)") {
    // 3 and 4 rows: one GEMV chunk; 6: two chunks; 9: two passes (8 + 1)
    for (int count : {3, 4, 6, 9}) check_batch_matches_alone(kTinyImage, options(WeightFormat::Stored, false), count, 3);
}

TEST_CASE("decode_batch: fast modes and quantized weights") {
    check_batch_matches_alone(kTinyImage, options(WeightFormat::Stored, true), 6, 3);
    check_batch_matches_alone(kTinyImage, options(WeightFormat::Q4, true), 6, 3);
    check_batch_matches_alone(kTinyImage, options(WeightFormat::Q8, false), 5, 3);
}

TEST_CASE("decode_batch: mixture of experts (tokens of several sequences share experts)") {
    check_batch_matches_alone(kTinyMoe, options(WeightFormat::Stored, false), 6, 3);
    check_batch_matches_alone(kTinyMoe, options(WeightFormat::Q4, true), 5, 3);
}

TEST_CASE("decode_batch: bad batches throw before any session changes") {
    const auto m = Model::load(kTinyImage + "/model");
    Session::Options small;
    small.max_context = 3;
    Session a(m), b(m), full(m, small);
    a.prefill({501, 26});
    b.prefill({27});
    full.prefill({28, 29, 30});
    CHECK_THROWS_WITH_AS(Session::decode_batch({&a, &full, &b}, {1, 2, 3}), doctest::Contains("does not fit: the context holds 3 tokens and 3 are used"),
                         Error);
    CHECK_THROWS_WITH_AS(Session::decode_batch({&a, &b}, {1, 100000}), doctest::Contains("outside the vocabulary"), Error);
    CHECK_THROWS_WITH_AS(Session::decode_batch({&a, &a}, {1, 2}), doctest::Contains("a session is given twice"), Error);
    CHECK_THROWS_WITH_AS(Session::decode_batch({&a}, {1, 2}), doctest::Contains("one token per session"), Error);
    const auto other = Model::load(kTinyImage + "/model");
    Session c(other);
    c.prefill({31});
    CHECK_THROWS_WITH_AS(Session::decode_batch({&a, &c}, {1, 2}), doctest::Contains("share one model"), Error);
    CHECK(a.length() == 2);
    CHECK(b.length() == 1);
    CHECK(a.next_position() == 2);
    CHECK(b.next_position() == 1);
}

TEST_CASE("DecodeBatcher: seated threads decode in shared steps with the logits of their own decode") {
    const auto m = Model::load(kTinyImage + "/model");
    const int64_t V = m->config.text.vocab_size;
    constexpr int kThreads = 4, kSteps = 6;
    std::vector<std::vector<float>> first;
    std::vector<Session> alone = prefilled_sessions(m, kTinyImage, kThreads, first);
    std::vector<Session> shared = prefilled_sessions(m, kTinyImage, kThreads, first);
    // one by one: each session's greedy logits
    std::vector<std::vector<float>> want(kThreads);
    for (int t = 0; t < kThreads; ++t) {
        int next = argmax(first[size_t(t)].data(), V);
        for (int k = 0; k < kSteps; ++k) {
            const std::vector<float> l = alone[size_t(t)].decode(next);
            want[size_t(t)].insert(want[size_t(t)].end(), l.begin(), l.end());
            next = argmax(l.data(), V);
        }
    }
    DecodeBatcher batcher(8);
    std::vector<std::vector<float>> got(kThreads);
    std::atomic<int> seated{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < kThreads; ++t)
        pool.emplace_back([&, t] {
            DecodeBatcher::Seat seat(batcher);
            ++seated;
            while (seated.load() < kThreads) std::this_thread::yield();  // all seated before the first step
            int next = argmax(first[size_t(t)].data(), V);
            for (int k = 0; k < kSteps; ++k) {
                const std::vector<float> l = seat.decode(shared[size_t(t)], next);
                got[size_t(t)].insert(got[size_t(t)].end(), l.begin(), l.end());
                next = argmax(l.data(), V);
            }
        });
    for (auto& t : pool) t.join();
    for (int t = 0; t < kThreads; ++t) {
        INFO("thread " << t);
        REQUIRE(got[size_t(t)].size() == want[size_t(t)].size());
        CHECK(std::memcmp(got[size_t(t)].data(), want[size_t(t)].data(), want[size_t(t)].size() * sizeof(float)) == 0);
    }
    // every seated sequence hands in its token before a step runs: all steps take all four
    const DecodeBatcher::Stats stats = batcher.stats();
    CHECK(stats.tokens == kThreads * kSteps);
    CHECK(stats.steps == kSteps);
}

TEST_CASE("DecodeBatcher: prefills run on its own thread, one at a time, and their errors reach the caller") {
    DecodeBatcher batcher(4, 2);
    const std::thread::id caller = std::this_thread::get_id();
    const std::thread::id worker = batcher.exclusive([] { return std::this_thread::get_id(); });
    CHECK(worker != caller);
    CHECK(batcher.exclusive([] { return std::this_thread::get_id(); }) == worker);
    CHECK(batcher.exclusive([] { return omp_get_max_threads(); }) == 2);
    CHECK(batcher.exclusive([] { return DecodeBatcher::inside(); }));  // a generate() called there bypasses it
    CHECK_FALSE(DecodeBatcher::inside());
    CHECK_THROWS_WITH_AS(batcher.exclusive([]() -> int { throw Error("bad prompt"); }), "bad prompt", Error);
    // concurrent prefills from several threads never overlap
    std::atomic<int> running{0}, most{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 4; ++t)
        callers.emplace_back([&] {
            for (int k = 0; k < 20; ++k)
                batcher.exclusive([&] {
                    const int now = ++running;
                    most = std::max(most.load(), now);
                    std::this_thread::sleep_for(std::chrono::microseconds(200));
                    return --running;
                });
        });
    for (auto& t : callers) t.join();
    CHECK(most.load() == 1);
}

TEST_CASE("KV cache pool: a new session takes an ended session's arrays and gets the logits of a fresh cache") {
    const auto m = Model::load(kTinyImage + "/model");
    Session::Options with_pool;
    with_pool.max_context = 64;
    with_pool.kv_pool = std::make_shared<KVCachePool>(1);
    Session::Options without = with_pool;
    without.kv_pool = nullptr;
    const std::vector<int> first = {5, 9, 2, 7, 7, 1, 3, 8}, second = {4, 6};
    const uint16_t* kept = nullptr;
    {
        Session s(m, with_pool);
        s.prefill(first);
        s.decode(11);
        kept = s.cache().bf16() ? reinterpret_cast<const uint16_t*>(s.cache().arrays.k16[0].data())
                                : reinterpret_cast<const uint16_t*>(s.cache().arrays.k[0].data());
    }
    Session reused(m, with_pool), fresh(m, without);
    const std::vector<float> a = reused.prefill(second), b = fresh.prefill(second);
    CHECK((reused.cache().bf16() ? reinterpret_cast<const uint16_t*>(reused.cache().arrays.k16[0].data())
                                 : reinterpret_cast<const uint16_t*>(reused.cache().arrays.k[0].data())) == kept);
    CHECK(a == b);
    CHECK(reused.decode(3) == fresh.decode(3));
    // arrays of another geometry are not handed out; past max_kept an ended cache is freed
    CHECK(with_pool.kv_pool->take(1, 1, false).empty());
    Session other(m, with_pool), third(m, with_pool);
    other.prefill(second), third.prefill(second);
}

namespace fs = std::filesystem;

// A copy of the tiny-image model folder with the toy tokenizer as tokenizer.json, removed at exit.
std::string engine_folder() {
    static const struct Folder {
        fs::path path = fs::temp_directory_path() / ("deepstack_test_batch_" + std::to_string(::getpid()));
        Folder() {
            copy_tree(kTinyImage + "/model", path);
            write_text(path / "tokenizer.json", toy_tokenizer_json());
        }
        ~Folder() { fs::remove_all(path); }
    } folder;
    return folder.path.string();
}

// A request's outcome: the reply, or the error's message.
struct Outcome {
    std::string text, error;
    std::vector<int> tokens;
    StopReason stop = StopReason::MaxTokens;
    bool operator==(const Outcome& o) const { return text == o.text && error == o.error && tokens == o.tokens && stop == o.stop; }
};

// Requests of different lengths and sampling: greedy and seeded, with and without the image; one
// stopped by its callback after 3 pieces, one whose prompt does not fit the context, one whose
// reply runs out of context (the image prompt takes 111 of its 120 tokens).
struct Job {
    Request request;
    int stop_after = -1;  // pieces before the callback returns false; -1: never
};

std::vector<Job> jobs() {
    std::vector<Job> js;
    auto text = [](std::string prompt, int tokens, std::optional<float> temperature, uint64_t seed) {
        Job j;
        j.request.prompt = std::move(prompt);
        j.request.sampling.max_new_tokens = tokens;
        j.request.sampling.temperature = temperature.value_or(0.f);
        j.request.sampling.seed = seed;
        return j;
    };
    js.push_back(text("Hello there.", 12, 0.f, 1));
    js.push_back(text("Count: one two three", 9, 0.9f, 7));
    Job image = text("Describe this image.", 7, 0.f, 1);
    image.request.images = {kTinyImage + "/inputs/image0_80x56.png"};
    js.push_back(image);
    js.push_back(text("A longer prompt, with more words in it than the others have.", 14, 1.2f, 3));
    Job stopped = text("Stop me early.", 20, 0.7f, 5);
    stopped.stop_after = 3;
    js.push_back(stopped);
    js.push_back(text(std::string(200, 'x'), 5, 0.f, 1));  // 200 tokens: over the context
    Job runs_out = image;
    runs_out.request.sampling.max_new_tokens = 30;
    js.push_back(runs_out);
    js.push_back(text("Last one.", 10, 0.5f, 9));
    return js;
}

Outcome answer(const Engine& engine, const Job& job) {
    Outcome o;
    int pieces = 0;
    try {
        const Reply r = engine.generate(job.request, [&](std::string_view) { return job.stop_after < 0 || ++pieces < job.stop_after; });
        o.text = r.text, o.tokens = r.tokens, o.stop = r.stop;
    } catch (const std::exception& e) {
        o.error = e.what();
    }
    return o;
}

void check_concurrent_equals_sequential(int max_batch) {
    EngineOptions opt;
    opt.max_context = 120;
    opt.max_batch = max_batch;
    const Engine engine = Engine::open(engine_folder(), opt);
    const std::vector<Job> js = jobs();
    std::vector<Outcome> sequential;
    for (const Job& j : js) sequential.push_back(answer(engine, j));
    CHECK(sequential[4].stop == StopReason::Callback);
    CHECK(sequential[5].error.find("does not fit") != std::string::npos);
    CHECK(sequential[6].stop == StopReason::MaxTokens);  // the context is full
    CHECK(sequential[6].tokens.size() == 120 - 111 + 1);  // the last reply token is never fed
    for (size_t i : {0, 1, 2, 3, 6, 7}) CHECK(sequential[i].error == "");

    std::vector<Outcome> concurrent(js.size());
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (size_t i = 0; i < js.size(); ++i)
        pool.emplace_back([&, i] {
            ++ready;
            while (ready.load() < int(js.size())) std::this_thread::yield();  // start together
            concurrent[i] = answer(engine, js[i]);
        });
    for (auto& t : pool) t.join();
    for (size_t i = 0; i < js.size(); ++i) {
        INFO("request " << i << " max_batch " << max_batch << ": " << concurrent[i].error);
        CHECK(concurrent[i] == sequential[i]);
    }
}

TEST_CASE("Engine: concurrent generate() calls give the replies of one-by-one calls") {
    check_concurrent_equals_sequential(8);
    check_concurrent_equals_sequential(3);  // more replies than a step takes
    check_concurrent_equals_sequential(1);  // each on its own
}

TEST_CASE("Engine: max_batch outside 1..8 is refused") {
    EngineOptions opt;
    opt.max_batch = 0;
    CHECK_THROWS_WITH_AS(Engine::open(engine_folder(), opt), doctest::Contains("EngineOptions::max_batch = 0 is outside 1..8"), Error);
    opt.max_batch = 9;
    CHECK_THROWS_WITH_AS(Engine::open(engine_folder(), opt), doctest::Contains("EngineOptions::max_batch = 9 is outside 1..8"), Error);
}

}  // namespace batch_tests
