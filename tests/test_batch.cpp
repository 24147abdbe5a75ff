// Batched decoding: Session::decode_batch runs one decode step of several sessions in one pass
// over the weights; each session must get exactly the logits (bits) it gets decoded on its own, in
// every compute mode and weight format, whatever the other sessions' lengths and positions.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack.hpp>

#include <cstring>

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

}  // namespace batch_tests
