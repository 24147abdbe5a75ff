// One loaded Model shared by several threads, each with its own Session (KV cache, position counter,
// its own greedy sampler state): every thread must produce exactly the logits and tokens of a
// sequential run. The kernels use OpenMP inside, so each thread's kernels open their own parallel
// regions (nested under std::thread, not under an OpenMP region): results must not depend on it.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack.hpp>

#include <atomic>
#include <cstring>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace deepstack;
using namespace deepstack::detail;


namespace {

struct RunResult {
    std::vector<float> prefill_logits;  // last prompt token [V]
    std::vector<float> step_logits;     // each decode step [steps, V]
    std::vector<int> tokens;            // greedy tokens
};


int argmax(const std::vector<float>& v) { return int(std::max_element(v.begin(), v.end()) - v.begin()); }

// Prefill with the image, then `steps` greedy decode steps. The image is decoded and preprocessed
// inside the run too, so image code runs concurrently as well.
RunResult run(const std::shared_ptr<const Model>& model, const std::vector<int>& ids, int steps) {
    RunResult r;
    const VisualInput img = prepare_image(*model, load_image(kTinyImage + "/inputs/image0_80x56.png"));
    Session s(model);
    r.prefill_logits = s.prefill(ids, {img});
    int next = argmax(r.prefill_logits);
    r.tokens.push_back(next);
    for (int k = 0; k < steps; ++k) {
        std::vector<float> l = s.decode(next);
        r.step_logits.insert(r.step_logits.end(), l.begin(), l.end());
        next = argmax(l);
        r.tokens.push_back(next);
    }
    return r;
}

void check_identical(const RunResult& a, const RunResult& b) {
    CHECK(a.tokens == b.tokens);
    REQUIRE(a.prefill_logits.size() == b.prefill_logits.size());
    REQUIRE(a.step_logits.size() == b.step_logits.size());
    // Bit-identical: same kernels, same data, same (static) work split.
    CHECK(std::memcmp(a.prefill_logits.data(), b.prefill_logits.data(), a.prefill_logits.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(a.step_logits.data(), b.step_logits.data(), a.step_logits.size() * sizeof(float)) == 0);
}

// Runs `threads` sessions at once on one model and compares each with the sequential reference.
void concurrent_runs(const std::shared_ptr<const Model>& model, int threads, int steps) {
    const std::vector<int> ids = golden_input_ids(kTinyImage);
    const RunResult reference = run(model, ids, steps);
    REQUIRE(int(reference.tokens.size()) == steps + 1);

    std::vector<RunResult> results(static_cast<size_t>(threads));
    std::vector<std::string> errors(static_cast<size_t>(threads));
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            ++ready;
            while (ready.load() < threads) std::this_thread::yield();  // start together
            try {
                results[size_t(t)] = run(model, ids, steps);
            } catch (const std::exception& e) {
                errors[size_t(t)] = e.what();
            }
        });
    for (auto& th : pool) th.join();
    for (int t = 0; t < threads; ++t) {
        CAPTURE(t);
        CHECK(errors[size_t(t)] == "");
        check_identical(results[size_t(t)], reference);
    }
}

}  // namespace

TEST_CASE("one model, 4 threads with their own sessions: same outputs as a sequential run") {
    const auto model = Model::load(kTinyImage + "/model");
    concurrent_runs(model, 4, 6);
}

TEST_CASE("one model, 4 threads, with OpenMP nesting enabled and 2 OpenMP threads per region") {
#ifdef _OPENMP
    const int saved_threads = omp_get_max_threads();
    const int saved_levels = omp_get_max_active_levels();
    omp_set_max_active_levels(2);
    omp_set_num_threads(2);
#endif
    const auto model = Model::load(kTinyImage + "/model");
    concurrent_runs(model, 4, 4);
#ifdef _OPENMP
    omp_set_max_active_levels(saved_levels);
    omp_set_num_threads(saved_threads);
#endif
}

TEST_CASE("sessions started from inside an OpenMP parallel region") {
    // A host that drives sessions from its own OpenMP loop: the kernels' regions nest inside it.
    const auto model = Model::load(kTinyImage + "/model");
    const std::vector<int> ids = golden_input_ids(kTinyImage);
    const RunResult reference = run(model, ids, 3);
    std::vector<RunResult> results(4);
    std::vector<std::string> errors(4);
#pragma omp parallel for num_threads(4) schedule(static, 1)
    for (int t = 0; t < 4; ++t) {
        try {
            results[size_t(t)] = run(model, ids, 3);
        } catch (const std::exception& e) {
            errors[size_t(t)] = e.what();
        }
    }
    for (int t = 0; t < 4; ++t) {
        CAPTURE(t);
        CHECK(errors[size_t(t)] == "");
        check_identical(results[size_t(t)], reference);
    }
}

TEST_CASE("errors in one thread leave the other sessions and the shared model intact") {
    const auto model = Model::load(kTinyImage + "/model");
    const std::vector<int> ids = golden_input_ids(kTinyImage);
    const RunResult reference = run(model, ids, 2);
    std::vector<RunResult> results(4);
    std::vector<std::string> errors(4);
    std::vector<std::thread> pool;
    for (int t = 0; t < 4; ++t)
        pool.emplace_back([&, t] {
            try {
                if (t % 2) {
                    Session s(model);
                    s.prefill({0, 1, 100000});  // bad token id
                } else {
                    results[size_t(t)] = run(model, ids, 2);
                }
            } catch (const Error& e) {
                errors[size_t(t)] = e.what();
            }
        });
    for (auto& th : pool) th.join();
    for (int t = 0; t < 4; ++t) {
        CAPTURE(t);
        if (t % 2) {
            CHECK(errors[size_t(t)].find("token id 100000 is outside the vocabulary") != std::string::npos);
        } else {
            CHECK(errors[size_t(t)] == "");
            check_identical(results[size_t(t)], reference);
        }
    }
}
