// SIMD kernels against their scalar references and Eigen's products, on random data with awkward
// sizes. The kernels run at the level active_isa() names: ctest runs this program once per SIMD
// level (DEEPSTACK_ISA), and the tests of a level's own kernels (AMX, VNNI, bf16 attention) call
// them where that level is active.
#include <doctest/doctest.h>
#include <deepstack/kernels.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

using namespace deepstack;
using namespace deepstack::detail;

#if defined(DEEPSTACK_LEVEL_AVX512BF16)
// The kernels only the avx512bf16 level has, tested directly where it is active.
namespace top = deepstack::detail::kern_avx512bf16;
namespace gemm_amx = top::gemm_amx;
namespace gemm_bf16 = top::gemm_bf16;
namespace gemm_q = top::gemm_q;
#endif

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

// A weight matrix in the requested storage dtype (the backing bytes live in `bytes`).
struct TestWeight {
    std::vector<float> f32;
    std::vector<uint16_t> u16;
    Matrix m;
};
TestWeight make_weight(int64_t N, int64_t K, DType dt, uint32_t seed, float scale = 0.5f) {
    TestWeight t;
    auto v = randn(size_t(N * K), seed, scale);
    t.m.rows = N;
    t.m.cols = K;
    t.m.dtype = dt;
    if (dt == DType::F32) {
        t.f32 = v;
        t.m.data = t.f32.data();
    } else {
        t.u16.resize(v.size());
        for (size_t i = 0; i < v.size(); ++i) t.u16[i] = dt == DType::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
        t.m.data = t.u16.data();
    }
    return t;
}

}  // namespace

namespace {

// Largest |a - b| relative to the per-element magnitude scale[i] (plus a tiny absolute floor).
double max_rel_err(const std::vector<float>& a, const std::vector<float>& b, const std::vector<double>& scale) {
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double e = std::fabs(double(a[i]) - double(b[i])) / (scale[i] + 1e-30);
        if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
    }
    return worst;
}

// sum_k |x[m,k] * w[n,k]| + |bias[n]|: the scale of the rounding error of output (m, n).
std::vector<double> dot_scale(const std::vector<float>& x, int64_t M, const Matrix& w, const float* bias) {
    const int64_t N = w.rows, K = w.cols;
    std::vector<double> s(size_t(M * N));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            double a = bias ? std::fabs(bias[n]) : 0.0;
            for (int64_t k = 0; k < K; ++k) a += std::fabs(double(x[size_t(m * K + k)]) * weight_at(w, n, k));
            s[size_t(m * N + n)] = a + 1e-20;
        }
    return s;
}

}  // namespace

TEST_CASE("matmul (exact mode): every thread split of the GEMM covers each output once") {
    // Large enough to be threaded: few columns (rows split across threads at multiples of the
    // micro-kernel height), many columns (dynamic column blocks), and both with ragged edges.
    struct Shape {
        int64_t M, N, K;
    };
    uint32_t seed = 77;
    for (Shape s : {Shape{100, 7, 2000}, Shape{61, 30, 1500}, Shape{29, 1100, 300}, Shape{300, 65, 257}}) {
        auto w = make_weight(s.N, s.K, DType::BF16, seed++);
        auto x = randn(size_t(s.M * s.K), seed++);
        std::vector<float> y(size_t(s.M * s.N), NAN), yr(size_t(s.M * s.N), NAN);
        matmul(x.data(), s.M, w.m, y.data(), nullptr);
        matmul_ref(x.data(), s.M, w.m, yr.data(), nullptr);
        INFO("M=" << s.M << " N=" << s.N << " K=" << s.K << " threads=" << omp_threads());
        CHECK(max_rel_err(y, yr, dot_scale(x, s.M, w.m, nullptr)) < 1e-5);
        matmul_bf16(x.data(), s.M, w.m, y.data(), nullptr);  // fast mode: its own packing, same split
        matmul_bf16_ref(x.data(), s.M, w.m, yr.data(), nullptr);
        CHECK(max_rel_err(y, yr, dot_scale(x, s.M, w.m, nullptr)) < 1e-5);
    }
}

TEST_CASE("matmul (exact mode) matches the scalar reference for all dtypes and odd shapes") {
    INFO("simd: " << std::string(isa_name(active_isa())));
    const int64_t Ms[] = {1, 2, 3, 4, 5, 13, 17, 40};
    const int64_t Ns[] = {1, 7, 33, 100};
    const int64_t Ks[] = {1, 15, 17, 64, 100, 300, 320};  // 64, 320: multiples of 32 (the BF16 pair GEMV)
    const DType dts[] = {DType::F32, DType::BF16, DType::F16};
    uint32_t seed = 1;
    for (DType dt : dts)
        for (int64_t K : Ks)
            for (int64_t N : Ns) {
                auto w = make_weight(N, K, dt, seed++);
                auto bias = randn(size_t(N), seed++);
                for (int64_t M : Ms)
                    for (int with_bias = 0; with_bias < 2; ++with_bias) {
                        const float* b = with_bias ? bias.data() : nullptr;
                        auto x = randn(size_t(M * K), seed++);
                        std::vector<float> y(size_t(M * N), NAN), yr(size_t(M * N), NAN);
                        matmul(x.data(), M, w.m, y.data(), b);
                        matmul_ref(x.data(), M, w.m, yr.data(), b);
                        const double err = max_rel_err(y, yr, dot_scale(x, M, w.m, b));
                        INFO(dtype_name(dt) << " M=" << M << " N=" << N << " K=" << K << " bias=" << with_bias);
                        CHECK(err < 1e-5);
                    }
            }
}

// Eigen's product (in double) of the same operands: the weights as every reader sees them
// (weight_at), so a mistake shared by the kernel and the scalar reference would still show.
std::vector<float> eigen_product(const std::vector<float>& x, int64_t M, const Matrix& w, const float* bias) {
    using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    RowMajor X(M, w.cols), W(w.rows, w.cols);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < w.cols; ++k) X(m, k) = x[size_t(m * w.cols + k)];
    for (int64_t n = 0; n < w.rows; ++n)
        for (int64_t k = 0; k < w.cols; ++k) W(n, k) = weight_at(w, n, k);
    RowMajor Y = X * W.transpose();
    if (bias) Y.rowwise() += Eigen::Map<const Eigen::VectorXf>(bias, w.rows).cast<double>().transpose();
    std::vector<float> y(size_t(M * w.rows));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < w.rows; ++n) y[size_t(m * w.rows + n)] = float(Y(m, n));
    return y;
}

TEST_CASE("matmul (exact mode) of every weight dtype and layout matches Eigen's product") {
    INFO("simd: " << std::string(isa_name(active_isa())));
    uint32_t seed = 7000;
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::Q8, DType::Q4})
        for (int layout = 0; layout < 3; ++layout)  // row-major, row tiles, pair panels (BF16)
            for (int64_t K : {17, 64, 600})
                for (int64_t N : {7, 40, 96}) {
                    auto w = make_weight(N, K, dt == DType::Q8 || dt == DType::Q4 ? DType::BF16 : dt, seed++);
                    if ((layout == 1 && (dt != DType::BF16 || !tileable(w.m))) || (layout == 2 && (dt != DType::BF16 || !panelable(w.m)))) continue;
                    Matrix m = dt == DType::Q8 || dt == DType::Q4 ? quantize(w.m, dt) : w.m;
                    if (layout == 1) tile_bf16_rows(m, w.u16.data());
                    if (layout == 2) panel_bf16_rows(m, w.u16.data());
                    auto bias = randn(size_t(N), seed++);
                    for (int64_t M : {1, 3, 4, 5, 29}) {
                        auto x = randn(size_t(M * K), seed++);
                        std::vector<float> y(size_t(M * N), NAN);
                        matmul(x.data(), M, m, y.data(), bias.data());
                        INFO(dtype_name(dt) << " layout=" << layout << " M=" << M << " N=" << N << " K=" << K);
                        CHECK(max_rel_err(y, eigen_product(x, M, m, bias.data()), dot_scale(x, M, m, bias.data())) < 1e-5);
                    }
                }
}

TEST_CASE("matmul blocks: K, N and M larger than one cache block") {
    // Sizes past KC (256), NC (<= 8 micro-panels) and MC, with tails in every dimension.
    for (DType dt : {DType::F32, DType::BF16}) {
        const int64_t M = 203, N = 517, K = 1031;
        auto w = make_weight(N, K, dt, 77);
        auto x = randn(size_t(M * K), 78);
        auto bias = randn(size_t(N), 79);
        std::vector<float> y(size_t(M * N)), yr(size_t(M * N));
        matmul(x.data(), M, w.m, y.data(), bias.data());
        matmul_ref(x.data(), M, w.m, yr.data(), bias.data());
        INFO(dtype_name(dt));
        CHECK(max_rel_err(y, yr, dot_scale(x, M, w.m, bias.data())) < 1e-5);
    }
}

TEST_CASE("matmul inside an OpenMP parallel region runs single-threaded and stays correct") {
    auto w = make_weight(37, 70, DType::BF16, 5);
    auto x = randn(size_t(2 * 9 * 70), 6);
    std::vector<float> y(size_t(2 * 9 * 37)), yr(size_t(2 * 9 * 37));
#pragma omp parallel for num_threads(2)
    for (int part = 0; part < 2; ++part) matmul(x.data() + part * 9 * 70, 9, w.m, y.data() + part * 9 * 37);
    matmul_ref(x.data(), 18, w.m, yr.data());
    CHECK(max_rel_err(y, yr, dot_scale(x, 18, w.m, nullptr)) < 1e-5);
}

TEST_CASE("f32_to_f16 rounds like the hardware conversion") {
    const float vals[] = {0.f, -0.f, 1.f, -2.5f, 65504.f, 65519.f, 65520.f, 1e-5f, 6.1e-5f, 5.96e-8f, 2.9e-8f, 3.1e-8f, 0.1f, 1.00048828125f};
    const uint16_t want[] = {0x0000, 0x8000, 0x3c00, 0xc100, 0x7bff, 0x7bff, 0x7c00, 0x00a8, 0x03ff, 0x0001, 0x0000, 0x0001, 0x2e66, 0x3c00};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); ++i) {
        INFO(vals[i]);
        CHECK(f32_to_f16(vals[i]) == want[i]);
    }
    for (float v : {0.1f, -3.75f, 1234.5f, 1e-6f}) CHECK(std::fabs(f16_to_f32(f32_to_f16(v)) - v) <= std::fabs(v) * 1e-3f + 6e-8f);
}

// The same attention call with q and k / v as views into wider rows (row strides ldq, ldkv; NaN
// between the rows, which must never be read) gives the dense call's output to the bit.
static bool strided_attention_matches(const std::vector<float>& q, int64_t Tq, const std::vector<float>& k, const std::vector<float>& v,
                                      int64_t Tk, int Hq, int Hkv, int d, float scale, bool causal, int64_t q_offset, detail::Compute mode,
                                      const std::vector<float>& dense_out) {
    const int64_t ldq = int64_t(Hq) * d + 7, ldkv = int64_t(Hkv) * d + 3;
    std::vector<float> qs(size_t(Tq * ldq), NAN), ks(size_t(Tk * ldkv), NAN), vs(size_t(Tk * ldkv), NAN), o(dense_out.size(), NAN);
    for (int64_t i = 0; i < Tq; ++i) std::copy_n(q.data() + i * Hq * d, Hq * d, qs.data() + i * ldq);
    for (int64_t j = 0; j < Tk; ++j) {
        std::copy_n(k.data() + j * Hkv * d, Hkv * d, ks.data() + j * ldkv);
        std::copy_n(v.data() + j * Hkv * d, Hkv * d, vs.data() + j * ldkv);
    }
    attention(qs.data(), Tq, ks.data(), vs.data(), Tk, Hq, Hkv, d, scale, causal, q_offset, o.data(), mode, ldq, ldkv);
    return std::memcmp(o.data(), dense_out.data(), o.size() * sizeof(float)) == 0;
}

TEST_CASE("attention (tiled, online softmax) matches the scalar reference") {
    struct Case {
        int64_t Tq, Tk;
        int Hq, Hkv, d;
        bool causal;
        int64_t q_offset;
    };
    const Case cases[] = {
        {1, 1, 2, 1, 16, false, 0},    {7, 7, 4, 2, 64, false, 0},    {33, 33, 2, 2, 37, true, 0},
        {65, 65, 3, 1, 128, true, 0},  {100, 130, 4, 4, 72, false, 0}, {1, 50, 8, 2, 64, true, 49},
        {3, 200, 4, 2, 128, true, 197}, {17, 90, 2, 1, 8, true, 73},   {40, 40, 2, 1, 5, false, 0},
        {70, 300, 2, 2, 64, true, 230},
        // one query (decode: keys split into chunks, merged): the 2B's heads, odd d, a query seeing
        // part of the keys, a single key, more chunks than threads
        {1, 300, 16, 8, 128, true, 299}, {1, 130, 6, 2, 37, true, 100}, {1, 1, 4, 4, 64, true, 0},
        {1, 1000, 4, 1, 72, false, 0},
    };
    uint32_t seed = 100;
    for (const auto& c : cases) {
        auto q = randn(size_t(c.Tq * c.Hq * c.d), seed++);
        auto k = randn(size_t(c.Tk * c.Hkv * c.d), seed++);
        auto v = randn(size_t(c.Tk * c.Hkv * c.d), seed++);
        const float scale = 1.f / std::sqrt(float(c.d)) * 2.f;  // sharper than usual
        std::vector<float> o(q.size(), NAN), r(q.size(), NAN);
        attention(q.data(), c.Tq, k.data(), v.data(), c.Tk, c.Hq, c.Hkv, c.d, scale, c.causal, c.q_offset, o.data());
        attention_ref(q.data(), c.Tq, k.data(), v.data(), c.Tk, c.Hq, c.Hkv, c.d, scale, c.causal, c.q_offset, r.data());
        // outputs are convex combinations of v rows (|v| ~ 1): absolute error in units of max |v|
        double worst = 0;
        for (size_t i = 0; i < o.size(); ++i) worst = std::max(worst, std::isnan(o[i]) ? 1e9 : std::fabs(double(o[i]) - r[i]));
        INFO("Tq=" << c.Tq << " Tk=" << c.Tk << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " d=" << c.d << " causal=" << c.causal
                   << " off=" << c.q_offset);
        CHECK(worst < 2e-5);
        CHECK(strided_attention_matches(q, c.Tq, k, v, c.Tk, c.Hq, c.Hkv, c.d, scale, c.causal, c.q_offset, detail::Compute::Exact, o));
    }
}

TEST_CASE("fast-mode attention (bf16 dot products) stays within bf16 rounding of the scalar reference") {
    struct Case {
        int64_t Tq, Tk;
        int Hq, Hkv, d;
        bool causal;
        int64_t q_offset;
    };
    // the vision tower's shape (d 64, 16 heads), the 8B's d = 72, odd sizes, a single key; causal
    // prefill with the 2B's heads (16 / 8 of 128) over more than one 256-key block, a chunk after
    // earlier tokens, rows that see none of a block; then fewer than 8 queries (the fp32 path)
    const Case cases[] = {{784, 784, 2, 2, 64, false, 0},  {100, 130, 4, 2, 72, false, 0}, {33, 1, 2, 1, 16, false, 0},
                          {600, 600, 16, 8, 128, true, 0}, {40, 300, 4, 2, 37, true, 260},  {9, 520, 2, 1, 64, true, 511},
                          {7, 65, 3, 3, 37, false, 0},     {1, 200, 2, 2, 128, true, 199}};
    uint32_t seed = 300;
    for (const auto& c : cases) {
        auto q = randn(size_t(c.Tq * c.Hq * c.d), seed++);
        auto k = randn(size_t(c.Tk * c.Hkv * c.d), seed++);
        auto v = randn(size_t(c.Tk * c.Hkv * c.d), seed++);
        const float scale = 1.f / std::sqrt(float(c.d)) * 2.f;
        std::vector<float> o(q.size(), NAN), r(q.size(), NAN);
        attention(q.data(), c.Tq, k.data(), v.data(), c.Tk, c.Hq, c.Hkv, c.d, scale, c.causal, c.q_offset, o.data(), detail::Compute::Fast);
        attention_ref(q.data(), c.Tq, k.data(), v.data(), c.Tk, c.Hq, c.Hkv, c.d, scale, c.causal, c.q_offset, r.data());
        // bf16 keeps 8 significant bits: scores (|s| up to ~8 here) move by up to ~|s| * 2^-8, the
        // probabilities and values by 2^-9 relative; the output (|v| ~ 1) by about 1e-2 at most
        double worst = 0, mean = 0;
        for (size_t i = 0; i < o.size(); ++i) {
            const double e = std::isnan(o[i]) ? 1e9 : std::fabs(double(o[i]) - r[i]);
            worst = std::max(worst, e);
            mean += e / double(o.size());
        }
        INFO("Tq=" << c.Tq << " Tk=" << c.Tk << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " d=" << c.d << " causal=" << c.causal
                   << " worst " << worst << " mean " << mean);
        CHECK(strided_attention_matches(q, c.Tq, k, v, c.Tk, c.Hq, c.Hkv, c.d, scale, c.causal, c.q_offset, detail::Compute::Fast, o));
#if defined(DEEPSTACK_LEVEL_AVX512BF16)
        if (c.Tq >= 8 && has_bf16_dot_products()) {
            CHECK(worst < 2e-2);
            CHECK(mean < 2e-3);
            CHECK(worst > 1e-6);  // the bf16 path ran (fp32 would agree to ~1e-6)
            // the vdpbf16ps products also where AMX tiles took them above: the same bounds
            std::vector<float> o512(q.size(), NAN);
            top::attention_bf16<top::simd::F32Src>(q.data(), c.Tq, k.data(), v.data(), c.Tk, c.Hq, c.Hkv, c.d, scale, c.causal, c.q_offset, o512.data(),
                                         0, 0, false);
            double worst512 = 0;
            for (size_t i = 0; i < o.size(); ++i) worst512 = std::max(worst512, std::isnan(o512[i]) ? 1e9 : std::fabs(double(o512[i]) - r[i]));
            CHECK(worst512 < 2e-2);
            CHECK(worst512 > 1e-6);
            continue;
        }
#endif
        CHECK(worst < 2e-5);  // fewer than 8 queries or no vdpbf16ps: the fp32 attention
    }
}

TEST_CASE("round_to_bf16 gives f32_to_bf16's bits, subnormals flushed to zero as vcvtneps2bf16 does") {
    // random values with specials among them (signed zeros, infinities, NaN, subnormals, the largest
    // finite value, halfway cases rounding down and up)
    auto x = randn(1000, 77, 3.f);
    const float special[] = {0.f, -0.f, INFINITY, -INFINITY, NAN, 1e-40f, -3e-39f, 3.4e38f, 1.00390625f, 1.01171875f, -1.00390625f};
    std::copy(std::begin(special), std::end(special), x.begin() + 3);
    for (int64_t n : {int64_t(1000), int64_t(15), int64_t(0)}) {
        std::vector<uint16_t> got(size_t(n) + 1, 0xabcd);
        round_to_bf16(x.data(), n, got.data());
        for (int64_t i = 0; i < n; ++i) {
            INFO("x = " << x[size_t(i)]);
            const float xi = x[size_t(i)];
            CHECK(got[size_t(i)] == f32_to_bf16(std::fabs(xi) < FLT_MIN ? std::copysign(0.f, xi) : xi));
        }
        CHECK(got[size_t(n)] == 0xabcd);  // nothing written past n
    }
}

TEST_CASE("attention over a bf16 KV cache: the bits of the fp32 call on the same (bf16-rounded) keys and values") {
    struct Case {
        int64_t Tq, Tk;
        int Hq, Hkv, d;
    };
    // decode (the 2B's and the 8B's heads, odd d, one key), a few queries (fp32 copy), a prefill
    // chunk after earlier tokens and one from an empty cache (packed as bf16 pairs)
    const Case cases[] = {{1, 300, 16, 8, 128}, {1, 77, 32, 8, 72}, {1, 130, 6, 2, 37}, {1, 1, 4, 4, 64},
                          {3, 90, 4, 2, 64},    {40, 300, 4, 2, 37}, {64, 64, 16, 8, 128}};
    uint32_t seed = 500;
    for (const auto& c : cases) {
        const int64_t row = int64_t(c.Hkv) * c.d;
        auto q = randn(size_t(c.Tq * c.Hq * c.d), seed++);
        auto k = randn(size_t(c.Tk * row), seed++);
        auto v = randn(size_t(c.Tk * row), seed++);
        std::vector<uint16_t> k16(k.size()), v16(v.size());
        for (size_t i = 0; i < k.size(); ++i) {
            k16[i] = f32_to_bf16(k[i]), k[i] = bf16_to_f32(k16[i]);
            v16[i] = f32_to_bf16(v[i]), v[i] = bf16_to_f32(v16[i]);
        }
        const float scale = 1.f / std::sqrt(float(c.d));
        std::vector<float> o(q.size(), NAN), want(q.size(), NAN);
        attention_cached_bf16(q.data(), c.Tq, k16.data(), v16.data(), c.Tk, c.Hq, c.Hkv, c.d, scale, o.data());
        attention(q.data(), c.Tq, k.data(), v.data(), c.Tk, c.Hq, c.Hkv, c.d, scale, true, c.Tk - c.Tq, want.data(), detail::Compute::Fast);
        INFO("Tq=" << c.Tq << " Tk=" << c.Tk << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " d=" << c.d);
        CHECK(std::memcmp(o.data(), want.data(), o.size() * sizeof(float)) == 0);
    }
}

TEST_CASE("decode attention of several sequences at once: each gets the bits of its own call") {
    // caches of different lengths (one key, under one chunk, several chunks, enough for threads)
    const int Hq = 16, Hkv = 8, d = 128;
    const int64_t row = int64_t(Hkv) * d, lengths[] = {1, 63, 300, 1000, 65, 2};
    const float scale = 1.f / std::sqrt(float(d));
    std::vector<std::vector<uint16_t>> k16, v16;
    std::vector<std::vector<float>> q, want, got;
    std::vector<DecodeQueryBf16> queries;
    uint32_t seed = 900;
    for (int64_t n : lengths) {
        auto to_bf16 = [](const std::vector<float>& x) {
            std::vector<uint16_t> b(x.size());
            for (size_t i = 0; i < x.size(); ++i) b[i] = f32_to_bf16(x[i]);
            return b;
        };
        k16.push_back(to_bf16(randn(size_t(n * row), seed++)));
        v16.push_back(to_bf16(randn(size_t(n * row), seed++)));
        q.push_back(randn(size_t(Hq * d), seed++));
        want.emplace_back(size_t(Hq * d), NAN);
        got.emplace_back(size_t(Hq * d), NAN);
        attention_cached_bf16(q.back().data(), 1, k16.back().data(), v16.back().data(), n, Hq, Hkv, d, scale, want.back().data());
    }
    for (size_t i = 0; i < q.size(); ++i) queries.push_back({q[i].data(), k16[i].data(), v16[i].data(), lengths[i], got[i].data()});
    for (int count : {1, 2, 6}) {
        for (auto& g : got) std::fill(g.begin(), g.end(), NAN);
        attention_decode_bf16(queries.data(), count, Hq, Hkv, d, scale);
        for (int i = 0; i < 6; ++i) {
            INFO("count=" << count << " sequence " << i << " keys " << lengths[i]);
            if (i < count)
                CHECK(std::memcmp(got[size_t(i)].data(), want[size_t(i)].data(), size_t(Hq * d) * sizeof(float)) == 0);
            else
                CHECK(std::isnan(got[size_t(i)][0]));  // not written
        }
    }
}

TEST_CASE("residual add fused with the norm after it: the same bits as add_inplace and the norm") {
    // sizes from one row to enough rows for threads (worth_threads: 2^16 elements)
    for (int64_t n : {1, 33, 1024, 2048})
        for (int64_t M : {1, 5, 64}) {
            auto h = randn(size_t(M * n), uint32_t(n + 3 * M), 2.f), r = randn(size_t(M * n), uint32_t(n + 5 * M));
            auto w = randn(size_t(n), 21), b = randn(size_t(n), 22);
            INFO("n=" << n << " M=" << M);
            auto h_ref = h, y_ref = h;
            add_inplace(h_ref.data(), r.data(), M * n);
            rmsnorm(h_ref.data(), M, n, w.data(), 1e-6f, y_ref.data());
            auto h1 = h;
            std::vector<float> y1(h.size(), NAN);
            add_rmsnorm(h1.data(), r.data(), M, n, w.data(), 1e-6f, y1.data());
            CHECK(h1 == h_ref);
            CHECK(y1 == y_ref);
            layernorm(h_ref.data(), M, n, w.data(), b.data(), 1e-6f, y_ref.data());
            auto h2 = h, y2 = r;  // output over the residual (the vision block's use)
            add_layernorm(h2.data(), y2.data(), M, n, w.data(), b.data(), 1e-6f, y2.data());
            CHECK(h2 == h_ref);
            CHECK(y2 == y_ref);
        }
}

TEST_CASE("vector gelu_tanh, gelu_erf, silu, silu_mul against exact double formulas") {
    std::vector<float> xs;
    for (float v = -12.f; v <= 12.f; v += 0.00731f) xs.push_back(v);
    for (float v : {0.f, -0.f, 1e-20f, -1e-20f, 1e-4f, -1e-4f, 30.f, -30.f, 90.f, -90.f}) xs.push_back(v);
    xs.push_back(0.5f);  // odd length
    const size_t n = xs.size();
    auto check = [&](std::string name, void (*fn)(float*, int64_t), double (*exact)(double), double rel) {
        auto y = xs;
        fn(y.data(), int64_t(n));
        double worst = 0;
        for (size_t i = 0; i < n; ++i) {
            const double e = exact(double(xs[i]));
            // relative error, except results underflowing below 1e-30 |x| (exp clamps at ~1e-38)
            const double err = std::fabs(double(y[i]) - e) / std::max(std::fabs(e), 1e-30 * std::fabs(double(xs[i])) + 1e-37);
            worst = std::max(worst, err);
        }
        INFO(name << " worst relative error " << worst);
        CHECK(worst <= rel);
    };
    // 0.5 x (1 + tanh u) written as x / (1 + e^(-2u)) so that double has no cancellation in the tail
    auto gt = [](double x) { return x / (1 + std::exp(-2 * 0.7978845608028654 * (x + 0.044715 * x * x * x))); };
    auto ge = [](double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); };
    auto si = [](double x) { return x / (1 + std::exp(-x)); };
    // the tails lose a little: the exponent argument (|u| up to ~30) carries its own fp32 rounding
    check("gelu_tanh", gelu_tanh_inplace, gt, 2e-5);  // results there are < 1e-20
    check("gelu_erf", gelu_erf_inplace, ge, 1e-6);
    check("silu", silu_inplace, si, 1e-6);
    // in the central range the bound is tighter
    std::vector<float> mid;
    for (float v = -4.f; v <= 4.f; v += 0.001f) mid.push_back(v);
    auto y = mid;
    gelu_tanh_inplace(y.data(), int64_t(y.size()));
    double worst = 0;
    for (size_t i = 0; i < mid.size(); ++i) worst = std::max(worst, std::fabs(y[i] - gt(mid[i])) / std::max(std::fabs(gt(mid[i])), 1e-30));
    CHECK(worst <= 1.5e-6);
    auto g = randn(1001, 3), u = randn(1001, 4);
    std::vector<float> out(1001);
    silu_mul(g.data(), u.data(), out.data(), 1001);
    for (size_t i = 0; i < out.size(); ++i) CHECK(std::fabs(out[i] - silu(g[i]) * u[i]) <= 1e-6f * std::fabs(silu(g[i]) * u[i]) + 1e-30f);
}

TEST_CASE("quantize Q8 / Q4: the bytes of a 16-group block are interleaved by quads, then the groups after it") {
    const int64_t N = 3, K = 17 * kQuantGroup;  // one whole block and one group after it
    auto w = make_weight(N, K, DType::F32, 42);
    for (DType qt : {DType::Q8, DType::Q4}) {
        const Matrix m = quantize(w.m, qt);
        const auto& qw = *static_cast<const QuantWeights*>(m.data);
        const int64_t gb = qt == DType::Q8 ? 32 : 16;
        REQUIRE(qw.row_bytes() == 17 * gb);
        // stored byte i of group g of row n, from the definition of the format (kernels.hpp)
        auto expect = [&](int64_t n, int64_t g, int64_t i) {
            auto q = [&](int64_t k) {
                const float s = qw.scale_at(n, g), v = w.f32[size_t(n * K + g * 32 + k)];
                return int(std::nearbyint(v / s));
            };
            if (qt == DType::Q8) return int8_t(uint8_t(q(i) + 128));
            return int8_t(uint8_t((q(i) + 8) | ((q(i + 16) + 8) << 4)));
        };
        bool same = true;
        for (int64_t n = 0; n < N; ++n) {
            const int8_t* row = qw.q.data() + n * qw.row_bytes();
            for (int64_t g = 0; g < 16; ++g)
                for (int64_t i = 0; i < gb; ++i) same = same && row[(i / 4) * 64 + g * 4 + i % 4] == expect(n, g, i);
            for (int64_t i = 0; i < gb; ++i) same = same && row[16 * gb + i] == expect(n, 16, i);
        }
        INFO(dtype_name(qt));
        CHECK(same);
    }
}

TEST_CASE("quantize Q8 / Q4: round trip within half a step, matmul matches the dequantized reference") {
    for (DType qt : {DType::Q8, DType::Q4}) {
        for (int64_t K : {1, 31, 32, 33, 100, 300, 600, 1100}) {  // 600: one 16-group block, then 3 groups; 1100: two, then 3
            for (DType src : {DType::F32, DType::BF16}) {
                const int64_t N = 37;
                auto w = make_weight(N, K, src, uint32_t(K * 3 + int(qt)));
                const Matrix q = quantize(w.m, qt);
                REQUIRE(q.dtype == qt);
                REQUIRE(bool(q.storage));
                const float qmax = qt == DType::Q8 ? 127.f : 7.f;
                // scale = max|w in group| / qmax rounded to bf16; round trip: |w - dequant(w)| <= scale / 2
                const auto& qw = *static_cast<const QuantWeights*>(q.data);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t g = 0; g * 32 < K; ++g) {
                        float amax = 0.f;
                        for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) amax = std::max(amax, std::fabs(weight_at(w.m, n, k)));
                        const float s = qw.scale_at(n, g);
                        CHECK(s == detail::bf16_to_f32(detail::f32_to_bf16(amax / qmax)));
                        for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) {
                            const float e = std::fabs(weight_at(q, n, k) - weight_at(w.m, n, k));
                            if (!(e <= s / 2 * 1.0001f + 1e-12f)) {
                                INFO(dtype_name(qt) << " K=" << K << " n=" << n << " k=" << k);
                                CHECK(e <= s / 2 * 1.0001f);
                            }
                        }
                    }
                for (int64_t M : {1, 2, 3, 4, 5, 17}) {
                    auto x = randn(size_t(M * K), uint32_t(M + K));
                    auto bias = randn(size_t(N), 9);
                    std::vector<float> y(size_t(M * N)), yr(size_t(M * N)), yf(size_t(M * N));
                    matmul(x.data(), M, q, y.data(), bias.data());
                    matmul_ref(x.data(), M, q, yr.data(), bias.data());
                    INFO(dtype_name(qt) << " K=" << K << " M=" << M);
                    CHECK(max_rel_err(y, yr, dot_scale(x, M, q, bias.data())) < 1e-5);
                    // against the unquantized weights: |error| <= sum_k |x_k| * step_k / 2
                    matmul_ref(x.data(), M, w.m, yf.data(), bias.data());
                    double worst = 0;
                    for (int64_t m = 0; m < M; ++m)
                        for (int64_t n = 0; n < N; ++n) {
                            double bound = 1e-5;
                            for (int64_t g = 0; g * 32 < K; ++g) {
                                float amax = 0.f;
                                for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) amax = std::max(amax, std::fabs(weight_at(w.m, n, k)));
                                for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) bound += std::fabs(x[size_t(m * K + k)]) * amax / (2 * qmax);
                            }
                            worst = std::max(worst, std::fabs(y[size_t(m * N + n)] - yf[size_t(m * N + n)]) / (bound * 1.001));
                        }
                    CHECK(worst <= 1.0);
                }
            }
        }
    }
    CHECK_THROWS_AS(quantize(make_weight(2, 2, DType::F32, 1).m, DType::BF16), Error);
}

// A copy of a row-major BF16 weight re-laid in place by relay (tile_bf16_rows, panel_bf16_rows).
static TestWeight relaid_copy(const TestWeight& rowmajor, void (*relay)(Matrix&, uint16_t*)) {
    TestWeight t = rowmajor;
    t.m.data = t.u16.data();
    relay(t.m, t.u16.data());
    return t;
}

// weight_segment_f32 (the GEMMs' weight conversion) of the active level.
static void weight_segment_f32(const Matrix& w, int64_t n, int64_t k0, int64_t kc, float* out) {
    switch (active_isa()) {
#if defined(DEEPSTACK_LEVEL_AVX512BF16)
        case Isa::Avx2: return kern_avx2::weight_segment_f32(w, n, k0, kc, out);
        case Isa::Avx512: return kern_avx512::weight_segment_f32(w, n, k0, kc, out);
        case Isa::Avx512Bf16:
        case Isa::Amx: return top::weight_segment_f32(w, n, k0, kc, out);
#elif defined(__aarch64__)
        case Isa::Neon: return kern_neon::weight_segment_f32(w, n, k0, kc, out);
#endif
        default: return kern_scalar::weight_segment_f32(w, n, k0, kc, out);
    }
}

// A re-laid BF16 matrix (row tiles, pair panels) against its row-major original: weight_at and
// weight_segment_f32 read the same values; matmul in both modes gives the same bits where both take
// the same kernel (gemv_bits: also M <= kGemvRows), else agrees within summation-order rounding.
static void check_reads_like_rowmajor(const Matrix& relaid, const Matrix& rowmajor, const std::vector<int64_t>& Ms, bool gemv_bits,
                                      uint32_t& seed) {
    const int64_t N = rowmajor.rows, K = rowmajor.cols;
    bool same = true;
    for (int64_t r = 0; r < N; ++r)
        for (int64_t c = 0; c < K; ++c) same = same && weight_at(relaid, r, c) == weight_at(rowmajor, r, c);
    CHECK(same);
    const int64_t k0 = K > 9 ? 5 : 1, kc = K - k0 - (K > 9 ? 4 : 0);  // a segment off both ends
    std::vector<float> seg_t(static_cast<size_t>(K)), seg_r(static_cast<size_t>(K));
    weight_segment_f32(relaid, N - 1, k0, kc, seg_t.data());
    weight_segment_f32(rowmajor, N - 1, k0, kc, seg_r.data());
    weight_segment_f32(relaid, 0, k0, kc, seg_t.data() + 1);
    weight_segment_f32(rowmajor, 0, k0, kc, seg_r.data() + 1);
    CHECK(seg_t == seg_r);
    auto bias = randn(size_t(N), seed++);
    for (int64_t M : Ms) {
        auto x = randn(size_t(M * K), seed++);
        INFO("M=" << M);
        for (detail::Compute mode : {detail::Compute::Exact, detail::Compute::Fast}) {
            std::vector<float> y_t(size_t(M * N), NAN), y_r(size_t(M * N), NAN);
            matmul(x.data(), M, relaid, y_t.data(), bias.data(), mode);
            matmul(x.data(), M, rowmajor, y_r.data(), bias.data(), mode);
            if (gemv_bits || M > kGemvRows) CHECK(y_t == y_r);
            CHECK(max_rel_err(y_t, y_r, dot_scale(x, M, rowmajor, bias.data())) < 1e-5);
        }
    }
}

TEST_CASE("row tiles: a BF16 matrix rewritten in place reads the same in every kernel, to the bit") {
    uint32_t seed = 900;
    // N: one tile, a ragged tail of row-major rows, threaded GEMV/GEMM with a tail; K: 32-column chunks
    for (int64_t N : {8, 13, 40, 100, 1100})
        for (int64_t K : {32, 64, 320, 2048}) {
            auto rowmajor = make_weight(N, K, DType::BF16, seed++);
            const TestWeight tiled = relaid_copy(rowmajor, tile_bf16_rows);
            INFO("N=" << N << " K=" << K);
            REQUIRE(tiled.m.tile_rows == kTileRows);
            if (K > kTileCols) CHECK(tiled.u16 != rowmajor.u16);  // one chunk per row: the tiles are the rows
            check_reads_like_rowmajor(tiled.m, rowmajor.m, {1, 2, 3, 4, 5, 17, 40}, true, seed);
            const Matrix q_t = quantize(tiled.m, DType::Q8), q_r = quantize(rowmajor.m, DType::Q8);
            const auto &bytes_t = static_cast<const QuantWeights*>(q_t.data)->q, &bytes_r = static_cast<const QuantWeights*>(q_r.data)->q;
            CHECK(std::vector<int8_t>(bytes_t.data(), bytes_t.data() + bytes_t.size()) ==
                  std::vector<int8_t>(bytes_r.data(), bytes_r.data() + bytes_r.size()));
        }
    auto f32 = make_weight(16, 64, DType::F32, 1);
    CHECK_THROWS_AS(tile_bf16_rows(f32.m, nullptr), Error);
    auto ragged = make_weight(16, 40, DType::BF16, 2);
    CHECK_FALSE(tileable(ragged.m));
    CHECK_THROWS_AS(tile_bf16_rows(ragged.m, ragged.u16.data()), Error);
}

TEST_CASE("pair panels: a BF16 matrix rewritten in place reads the same in every kernel") {
    uint32_t seed = 950;
    // N: one group, a ragged tail of row-major rows, several column blocks (NC = 256) with a tail;
    // K: one pair, a depth below and above one block (KC = 512) with odd pair counts per row
    for (int64_t N : {32, 45, 300, 1100})
        for (int64_t K : {2, 30, 64, 1030}) {
            auto rowmajor = make_weight(N, K, DType::BF16, seed++);
            const TestWeight panels = relaid_copy(rowmajor, panel_bf16_rows);
            INFO("N=" << N << " K=" << K);
            REQUIRE(panels.m.panel_rows == kPanelRows);
            if (K > 2) CHECK(panels.u16 != rowmajor.u16);  // one pair per row: the panels are the rows
            // M: the GEMVs' sizes (a GEMM reads panels), one row panel with a tail, more than one row block (MC = 192)
            check_reads_like_rowmajor(panels.m, rowmajor.m, {1, 4, 17, 250}, false, seed);
        }
    auto odd = make_weight(32, 31, DType::BF16, 3), short_rows = make_weight(31, 64, DType::BF16, 4);
    CHECK_FALSE(panelable(odd.m));
    CHECK_FALSE(panelable(short_rows.m));
    CHECK_THROWS_AS(panel_bf16_rows(odd.m, odd.u16.data()), Error);
    CHECK_FALSE(panelable(relaid_copy(make_weight(32, 64, DType::BF16, 5), tile_bf16_rows).m));
}

TEST_CASE("matmul_bf16 (fast mode) matches its reference: bf16-rounded activations, fp32 accumulation") {
    if (has_bf16_dot_products()) MESSAGE("fast mode uses AVX-512 BF16 dot products");
    uint32_t seed = 500;
    for (int64_t K : {1, 2, 15, 31, 33, 100, 600, 1031})
        for (int64_t N : {1, 7, 33, 300}) {
            auto w = make_weight(N, K, DType::BF16, seed++);
            auto bias = randn(size_t(N), seed++);
            for (int64_t M : {1, 2, 3, 4, 5, 17, 40}) {
                auto x = randn(size_t(M * K), seed++);
                std::vector<float> y(size_t(M * N), NAN), yr(size_t(M * N), NAN), y2(size_t(M * N), NAN);
                matmul_bf16(x.data(), M, w.m, y.data(), bias.data());
                matmul_bf16_ref(x.data(), M, w.m, yr.data(), bias.data());
                INFO("M=" << M << " N=" << N << " K=" << K);
                CHECK(max_rel_err(y, yr, dot_scale(x, M, w.m, bias.data())) < 1e-5);
                matmul(x.data(), M, w.m, y2.data(), bias.data(), detail::Compute::Fast);
                CHECK(max_rel_err(y2, yr, dot_scale(x, M, w.m, bias.data())) < 1e-5);
            }
        }
    // other dtypes: fast mode is the exact mode
    auto w = make_weight(9, 40, DType::F32, 3);
    auto x = randn(5 * 40, 4);
    std::vector<float> y(5 * 9), yr(5 * 9);
    matmul(x.data(), 5, w.m, y.data(), nullptr, detail::Compute::Fast);
    matmul_ref(x.data(), 5, w.m, yr.data());
    CHECK(max_rel_err(y, yr, dot_scale(x, 5, w.m, nullptr)) < 1e-5);
}

#if defined(DEEPSTACK_LEVEL_AVX512BF16)
TEST_CASE("AMX GEMM (fast mode, bf16 tiles): the reference's values and the AVX-512 GEMM's within summation order") {
    if (!amx_active()) {
        MESSAGE("AMX not active at this level or on this machine: skipped");
        return;
    }
    MESSAGE("fast-mode GEMMs of BF16 weights run on AMX tiles");
    // Every thread's packing buffers start full of NaN pairs, so padding the kernel failed to zero
    // would show (a stale finite value times a zero activation would not).
    auto poison_scratch = [] {
#pragma omp parallel
        {
            const size_t b_floats = size_t(gemm_amx::NC * gemm_amx::KC / 2), a_floats = size_t(1 << 20);
            std::memset(thread_workspace<GemmWorkspace>().b_panel.get(b_floats), 0xff, b_floats * 4);
            std::memset(thread_workspace<GemmWorkspace>().a_panels.get(a_floats), 0xff, a_floats * 4);
        }
    };
    uint32_t seed = 1700;
    // M: one tile row or two, a block edge in each, more than one row block (MC = 256); N: a
    // micro-panel's edge, several column blocks (NC = 256); K: below a tile, ragged tiles, past KC (512)
    for (int64_t K : {2, 30, 64, 100, 544, 1030})
        for (int64_t N : {5, 32, 45, 300})
            for (int64_t M : {5, 16, 17, 40, 300}) {
                auto w = make_weight(N, K, DType::BF16, seed++);
                auto bias = randn(size_t(N), seed++);
                auto x = randn(size_t(M * K), seed++);
                INFO("M=" << M << " N=" << N << " K=" << K);
                for (int with_bias = 0; with_bias < 2; ++with_bias) {
                    const float* b = with_bias ? bias.data() : nullptr;
                    std::vector<float> y(size_t(M * N), NAN), y512(size_t(M * N), NAN), yr(size_t(M * N), NAN);
                    poison_scratch();
                    gemm_amx::gemm(x.data(), M, w.m, y.data(), b);
                    gemm_bf16::gemm(x.data(), M, w.m, y512.data(), b);
                    matmul_bf16_ref(x.data(), M, w.m, yr.data(), b);
                    const auto scale = dot_scale(x, M, w.m, b);
                    CHECK(max_rel_err(y, yr, scale) < 1e-5);
                    CHECK(max_rel_err(y, y512, scale) < 1e-5);
                }
                if (N >= kPanelRows && K % 2 == 0) {  // pair panels read in place (K % 32 == 0) or copied and padded
                    const TestWeight panels = relaid_copy(w, panel_bf16_rows);
                    std::vector<float> yp(size_t(M * N), NAN), y(size_t(M * N), NAN);
                    poison_scratch();
                    gemm_amx::gemm(x.data(), M, panels.m, yp.data(), bias.data());
                    gemm_amx::gemm(x.data(), M, w.m, y.data(), bias.data());
                    CHECK(yp == y);
                }
                if (N >= kTileRows && K % kTileCols == 0) {  // row tiles
                    const TestWeight tiles = relaid_copy(w, tile_bf16_rows);
                    std::vector<float> yt(size_t(M * N), NAN), y(size_t(M * N), NAN);
                    gemm_amx::gemm(x.data(), M, tiles.m, yt.data(), nullptr);
                    gemm_amx::gemm(x.data(), M, w.m, y.data(), nullptr);
                    CHECK(yt == y);
                }
            }
}
#endif

#if defined(DEEPSTACK_LEVEL_AVX512BF16)
TEST_CASE("AMX GEMM (exact mode): three bf16 pieces hold the fp32 activations exactly, so it is an fp32 GEMM") {
    if (!amx_active()) {
        MESSAGE("AMX not active at this level or on this machine: skipped");
        return;
    }
    MESSAGE("exact-mode GEMMs of BF16 weights run on AMX tiles (three pieces)");
    SUBCASE("the split: hi + mid + lo == x for every fp32 of bf16's normal range") {
        std::mt19937 rng(91);
        std::uniform_real_distribution<float> mant(1.f, 2.f);
        std::uniform_int_distribution<int> expo(-100, 100);
        const int64_t K = 70;  // two depth tiles and a ragged third
        std::vector<float> x(size_t(gemm_amx::MR * K));
        for (size_t i = 0; i < x.size(); ++i) x[i] = std::ldexp(mant(rng), expo(rng)) * (i % 3 ? 1.f : -1.f);
        x[0] = 1.f + FLT_EPSILON, x[1] = -(2.f - FLT_EPSILON), x[2] = FLT_MAX / 2, x[3] = 0.f;  // the last bit of the mantissa
        std::vector<uint32_t> panels(size_t(3 * gemm_amx::MR * (gemm_amx::KC / 2)), 0xffffffffu);
        gemm_amx::pack_a<3>(x.data(), K, 0, gemm_amx::MR, 0, K, panels.data());
        const auto* bf = reinterpret_cast<const uint16_t*>(panels.data());
        auto piece = [&](int j, int i, int64_t k) {  // [steps][3 pieces][MR rows][32 bf16]
            return double(bf16_to_f32(bf[((k / 32 * 3 + j) * gemm_amx::MR + i) * 32 + k % 32]));
        };
        int wrong = 0;
        for (int i = 0; i < gemm_amx::MR; ++i)
            for (int64_t k = 0; k < 96; ++k)  // K rounded up to whole tiles: padding zero in every piece
                wrong += piece(0, i, k) + piece(1, i, k) + piece(2, i, k) != (k < K ? double(x[size_t(i * K + k)]) : 0.0);
        CHECK(wrong == 0);
    }
    SUBCASE("products against the fp32 reference (bf16 weights), where one rounded piece is far off") {
        uint32_t seed = 1800;
        for (int64_t K : {30, 100, 544, 1030})
            for (int64_t N : {5, 45, 300})
                for (int64_t M : {5, 17, 40, 300}) {
                    auto w = make_weight(N, K, DType::BF16, seed++);
                    auto bias = randn(size_t(N), seed++);
                    auto x = randn(size_t(M * K), seed++);
                    INFO("M=" << M << " N=" << N << " K=" << K);
                    std::vector<float> y(size_t(M * N), NAN), y1(size_t(M * N), NAN), yr(size_t(M * N), NAN);
                    gemm_amx::gemm(x.data(), M, w.m, y.data(), bias.data(), 3);
                    gemm_amx::gemm(x.data(), M, w.m, y1.data(), bias.data(), 1);
                    matmul_ref(x.data(), M, w.m, yr.data(), bias.data());
                    const auto scale = dot_scale(x, M, w.m, bias.data());
                    CHECK(max_rel_err(y, yr, scale) < 1e-6);
                    CHECK(max_rel_err(y1, yr, scale) > 1e-4);  // bf16 activations: ~2^-9 per product
                    std::vector<float> ym(size_t(M * N), NAN);
                    matmul(x.data(), M, w.m, ym.data(), bias.data());  // exact mode's matmul takes this kernel
                    CHECK(ym == y);
                }
    }
}
#endif

#if defined(DEEPSTACK_LEVEL_AVX512BF16)
TEST_CASE("AMX GEMM of Q8 / Q4 weights: bf16 activations times the weights dequantized and rounded to bf16") {
    if (!amx_active()) {
        MESSAGE("AMX not active at this level or on this machine: skipped");
        return;
    }
    uint32_t seed = 1900;
    // K: groups after the last 16-group block, a depth past KC; N: a micro-panel's edge
    for (DType dt : {DType::Q8, DType::Q4})
        for (int64_t K : {40, 544, 1030})
            for (int64_t N : {7, 45})
                for (int64_t M : {5, 40}) {
                    const auto src = make_weight(N, K, DType::BF16, seed++);
                    const Matrix q = quantize(src.m, dt);
                    // the reference's weights: each dequantized value rounded to bf16, as a BF16 matrix
                    TestWeight deq = src;
                    std::vector<float> row(static_cast<size_t>(K));
                    for (int64_t n = 0; n < N; ++n) {
                        top::dequant_row_segment(q, n, 0, K, row.data());
                        for (int64_t k = 0; k < K; ++k) deq.u16[size_t(n * K + k)] = f32_to_bf16(row[size_t(k)]);
                    }
                    deq.m.data = deq.u16.data();
                    auto x = randn(size_t(M * K), seed++);
                    auto bias = randn(size_t(N), seed++);
                    std::vector<float> y(size_t(M * N), NAN), y2(size_t(M * N), NAN), yr(size_t(M * N), NAN);
                    gemm_amx::gemm(x.data(), M, q, y.data(), bias.data());
                    matmul(x.data(), M, q, y2.data(), bias.data(), detail::Compute::Fast);  // the mode's dispatch takes it
                    matmul_bf16_ref(x.data(), M, deq.m, yr.data(), bias.data());
                    INFO(dtype_name(dt) << " M=" << M << " N=" << N << " K=" << K);
                    CHECK(max_rel_err(y, yr, dot_scale(x, M, deq.m, bias.data())) < 1e-5);
                    CHECK(y2 == y);
                }
}
#endif

#if defined(DEEPSTACK_LEVEL_AVX512BF16)
TEST_CASE("activation quantization: the AVX-512 version gives the scalar one's bytes, scales and group sums") {
    if (active_isa() < Isa::Avx512Bf16) {
        MESSAGE("VNNI not active: skipped");
        return;
    }
    uint32_t seed = 950;
    for (int64_t K : {1, 31, 32, 33, 64, 100, 2048, 6150}) {
        const int64_t kpad = (K + 31) / 32 * 32, G = kpad / 32;
        auto x = randn(size_t(K), seed++, 3.f);
        if (K >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.f);  // an all-zero group: scale 0
        if (K >= 100) x[70] = 1e30f, x[71] = -1e-30f;                   // extreme magnitudes in one group
        std::vector<int8_t> q(size_t(kpad), 1), qs(size_t(kpad), 2);
        std::vector<float> s(size_t(G), NAN), ss(size_t(G), NAN);
        std::vector<int32_t> sums(size_t(G), -1);
        quantize_act_row(x.data(), K, kpad, q.data(), s.data());
        gemm_q::quantize_act_row_simd(x.data(), K, kpad, qs.data(), ss.data(), sums.data());
        INFO("K=" << K);
        CHECK(q == qs);
        CHECK(std::memcmp(s.data(), ss.data(), s.size() * sizeof(float)) == 0);
        bool sums_ok = true;
        for (int64_t g = 0; g < G; ++g) {
            int32_t want = 0;
            for (int i = 0; i < 32; ++i) want += q[size_t(g * 32 + i)];
            sums_ok = sums_ok && sums[size_t(g)] == want;
        }
        CHECK(sums_ok);
    }
}
#endif

TEST_CASE("fast quantized matmul (int8 activations, VNNI) matches its reference and the error bound") {
    const bool vnni = active_isa() >= Isa::Avx512Bf16;
    if (vnni) MESSAGE("fast quantized mode uses AVX-512 VNNI");
    uint32_t seed = 900;
    for (DType qt : {DType::Q8, DType::Q4})
        // 600, 640, 1030: whole 16-group blocks of the VNNI GEMV and the GEMM's packing, then groups after them
        for (int64_t K : {1, 31, 32, 33, 64, 100, 192, 256, 300, 600, 640, 1030})  // 640, 1030: whole 16-group blocks + groups after
            for (int64_t N : {1, 7, 33, 100}) {
                auto w = make_weight(N, K, DType::BF16, seed++);
                const Matrix q = quantize(w.m, qt);
                auto bias = randn(size_t(N), seed++);
                // up to kQuantGemvMaxRows the GEMV, past it the GEMM
                for (int64_t M : {1, 2, 3, 4, 5, 6, 17, 40, kQuantGemvMaxRows + 3}) {
                    auto x = randn(size_t(M * K), seed++);
                    std::vector<float> y(size_t(M * N), NAN), yr(size_t(M * N), NAN), ye(size_t(M * N));
                    matmul_quant_fast(x.data(), M, q, y.data(), bias.data());
                    matmul_quant_fast_ref(x.data(), M, q, yr.data(), bias.data());
                    if (!vnni) matmul_ref(x.data(), M, q, yr.data(), bias.data());  // without VNNI: the exact kernels
                    INFO(dtype_name(qt) << " M=" << M << " N=" << N << " K=" << K);
                    CHECK(max_rel_err(y, yr, dot_scale(x, M, q, bias.data())) < 1e-5);
                    // vs the exact mode on the same weights: activation rounding <= max|x_g| / 254 per element
                    matmul_ref(x.data(), M, q, ye.data(), bias.data());
                    const auto sc = dot_scale(x, M, q, bias.data());
                    double worst = 0;
                    for (int64_t m = 0; m < M; ++m)
                        for (int64_t n = 0; n < N; ++n) {
                            double bound = 1e-5;
                            for (int64_t g = 0; g * 32 < K; ++g) {
                                float amax = 0.f;
                                for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) amax = std::max(amax, std::fabs(x[size_t(m * K + k)]));
                                for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) bound += std::fabs(weight_at(q, n, k)) * amax / 254;
                            }
                            worst = std::max(worst, std::fabs(y[size_t(m * N + n)] - ye[size_t(m * N + n)]) / (bound * 1.001 + 1e-5 * sc[size_t(m * N + n)]));
                        }
                    CHECK(worst <= 1.0);
                }
            }
}

TEST_CASE("GEMV: each activation row gets the same bits for any row count up to kGemvRows") {
    // A decode step of several sequences runs one product over all their rows; each sequence's
    // result must be the bits it gets alone (M = 1), in every mode and weight format. N: a thread
    // split with ragged runs of 16; K: the pair kernel (multiple of 32), quant blocks and tails.
    uint32_t seed = 1300;
    for (int64_t K : {64, 600, 1031})
        for (int64_t N : {45, 700}) {
            auto bf16 = make_weight(N, K, DType::BF16, seed++);
            const TestWeight tiled = tileable(bf16.m) ? relaid_copy(bf16, tile_bf16_rows) : bf16;
            auto f32 = make_weight(N, K, DType::F32, seed++), f16 = make_weight(N, K, DType::F16, seed++);
            std::vector<std::pair<const char*, Matrix>> ws = {{"bf16", bf16.m}, {"f32", f32.m}, {"f16", f16.m}, {"q8", quantize(bf16.m, DType::Q8)},
                                                              {"q4", quantize(bf16.m, DType::Q4)}};
            if (tileable(bf16.m)) ws.push_back({"bf16 tiles", tiled.m});
            const auto x = randn(size_t(kGemvRows * K), seed++);
            for (const auto& [name, w] : ws)
                for (detail::Compute mode : {detail::Compute::Exact, detail::Compute::Fast}) {
                    std::vector<float> alone(size_t(kGemvRows * N), NAN);
                    for (int64_t m = 0; m < kGemvRows; ++m) matmul(x.data() + m * K, 1, w, alone.data() + m * N, nullptr, mode);
                    for (int64_t M = 2; M <= kGemvRows; ++M) {
                        std::vector<float> y(size_t(M * N), NAN);
                        matmul(x.data(), M, w, y.data(), nullptr, mode);
                        INFO(name << " K=" << K << " N=" << N << " M=" << M << " fast=" << (mode == detail::Compute::Fast));
                        CHECK(std::equal(y.begin(), y.end(), alone.begin()));
                    }
                }
        }
}

TEST_CASE("matmul_shared_input: one call over matrices sharing an input gives each matmul's bits") {
    // a decoder layer's q / k / v (different row counts, one width) and gate / up, in every mode and
    // format: fast Q8 / Q4 with M <= kGemvRows run as one GEMV over the stacked rows, the rest one matmul each
    uint32_t seed = 1200;
    for (DType qt : {DType::BF16, DType::Q8, DType::Q4})
        for (int64_t K : {64, 600}) {
            std::vector<Matrix> ws;
            std::vector<TestWeight> keep;
            for (int64_t N : {48, 17, 17}) {
                keep.push_back(make_weight(N, K, DType::BF16, seed++));
                ws.push_back(qt == DType::BF16 ? keep.back().m : quantize(keep.back().m, qt));
            }
            for (int64_t M : {1, 2, 4, 5, 8, 9})
                for (detail::Compute mode : {detail::Compute::Exact, detail::Compute::Fast}) {
                    auto x = randn(size_t(M * K), seed++);
                    std::vector<std::vector<float>> y(3), want(3);
                    const Matrix* w[3];
                    float* out[3];
                    for (int i = 0; i < 3; ++i) {
                        y[size_t(i)].assign(size_t(M * ws[size_t(i)].rows), NAN);
                        want[size_t(i)].assign(y[size_t(i)].size(), NAN);
                        w[i] = &ws[size_t(i)];
                        out[i] = y[size_t(i)].data();
                        matmul(x.data(), M, ws[size_t(i)], want[size_t(i)].data(), nullptr, mode);
                    }
                    matmul_shared_input(x.data(), M, w, out, 3, mode);
                    INFO(dtype_name(qt) << " K=" << K << " M=" << M << " fast=" << (mode == detail::Compute::Fast));
                    CHECK(y == want);
                }
        }
}
