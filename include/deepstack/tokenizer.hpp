// deepstack/tokenizer.hpp - the byte-level BPE tokenizer of Qwen3 (and other GPT-2 style models),
// read from a Hugging Face tokenizer.json.
//
// encode(text), as Hugging Face tokenizers does it without special tokens added:
//   1. added tokens (tokenizer.json "added_tokens") in the raw text become single ids: leftmost-longest
//      matching with their single_word / lstrip / rstrip flags; tokens marked "normalized" are looked
//      for in the normalised text instead;
//   2. the text between them is NFC-normalised ("normalizer": NFC or none);
//   3. split by the pre-tokenizer regexes ("Split" with behavior Isolated; "ByteLevel" with use_regex
//      adds GPT-2's regex), run by PCRE2 with \s meaning Unicode White_Space as in Oniguruma;
//   4. each piece is mapped byte by byte to GPT-2's printable alphabet, starts as one symbol per byte
//      and is merged pairwise by merge rank (lowest rank first, leftmost first among equal pairs).
// decode(ids) maps the symbols back to bytes; added tokens decode to their content. Invalid UTF-8 in
// the joined bytes (a character cut between ids) becomes U+FFFD; StreamDecoder holds such bytes back.
#pragma once
#include "common.hpp"
#include "config.hpp"

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <string_view>
#include <unordered_map>

namespace deepstack::detail {


// ---- UTF-8 ---------------------------------------------------------------------------------------

enum class Utf8State { Ok, Truncated, Invalid };
struct Utf8Step {
    size_t len;       // Ok: bytes of the character; otherwise bytes of the maximal ill-formed subpart (>= 1)
    Utf8State state;  // Truncated: a valid prefix of a character cut by the end of the buffer
};

// Classifies the character starting at s[0] (n >= 1 bytes available), per Unicode table 3-7.
inline Utf8Step utf8_step(const unsigned char* s, size_t n) {
    const unsigned c = s[0];
    if (c < 0x80) return {1, Utf8State::Ok};
    size_t need;
    unsigned lo = 0x80, hi = 0xbf;  // allowed range of the first continuation byte
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c == 0xe0) { need = 2; lo = 0xa0; }
    else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) need = 2;
    else if (c == 0xed) { need = 2; hi = 0x9f; }
    else if (c == 0xf0) { need = 3; lo = 0x90; }
    else if (c >= 0xf1 && c <= 0xf3) need = 3;
    else if (c == 0xf4) { need = 3; hi = 0x8f; }
    else return {1, Utf8State::Invalid};
    for (size_t k = 1; k <= need; ++k) {
        if (k >= n) return {k, Utf8State::Truncated};
        if (s[k] < lo || s[k] > hi) return {k, Utf8State::Invalid};
        lo = 0x80;
        hi = 0xbf;
    }
    return {need + 1, Utf8State::Ok};
}

// Offset of the first byte that is not part of a well-formed character, or npos.
inline size_t utf8_invalid_at(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    for (size_t i = 0; i < s.size();) {
        Utf8Step st = utf8_step(p + i, s.size() - i);
        if (st.state != Utf8State::Ok) return i;
        i += st.len;
    }
    return std::string_view::npos;
}

// Appends `bytes` as UTF-8, each maximal ill-formed subpart replaced by U+FFFD (as Rust's
// String::from_utf8_lossy, which Hugging Face decoding uses).
inline void append_utf8_lossy(std::string& out, std::string_view bytes) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    for (size_t i = 0; i < bytes.size();) {
        Utf8Step st = utf8_step(p + i, bytes.size() - i);
        if (st.state == Utf8State::Ok) out.append(bytes.data() + i, st.len);
        else out += "\xef\xbf\xbd";
        i += st.len;
    }
}

// Length of the prefix of `bytes` that does not end inside an unfinished character.
inline size_t utf8_complete_prefix(std::string_view bytes) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    size_t i = 0;
    while (i < bytes.size()) {
        Utf8Step st = utf8_step(p + i, bytes.size() - i);
        if (st.state == Utf8State::Truncated) break;
        i += st.len;
    }
    return i;
}

inline void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xc0 | cp >> 6);
        out += char(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += char(0xe0 | cp >> 12);
        out += char(0x80 | (cp >> 6 & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    } else {
        out += char(0xf0 | cp >> 18);
        out += char(0x80 | (cp >> 12 & 0x3f));
        out += char(0x80 | (cp >> 6 & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    }
}

// Decodes the well-formed character of `len` bytes at p.
inline uint32_t utf8_decode(const unsigned char* p, size_t len) {
    if (len == 1) return p[0];
    uint32_t cp = p[0] & (0x7f >> len);
    for (size_t k = 1; k < len; ++k) cp = cp << 6 | (p[k] & 0x3f);
    return cp;
}

// NFC of well-formed UTF-8 (ASCII is its own NFC).
inline std::string nfc(std::string_view s) {
    if (std::all_of(s.begin(), s.end(), [](char c) { return (unsigned char)c < 0x80; })) return std::string(s);
    utf8proc_uint8_t* out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()), &out,
                                      utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) throw Error(std::string("NFC normalisation failed: ") + utf8proc_errmsg(n));
    std::string r(reinterpret_cast<const char*>(out), size_t(n));
    std::free(out);
    return r;
}

// ---- GPT-2 byte-level alphabet -----------------------------------------------------------------

// Byte -> code point: printable Latin-1 bytes stand for themselves, the other 68 bytes (controls,
// space, 0x7f-0xa0, 0xad) become U+0100..U+0143 in byte order.
inline const std::array<uint32_t, 256>& byte_to_codepoint() {
    static const std::array<uint32_t, 256> table = [] {
        std::array<uint32_t, 256> t{};
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
            t[b] = printable ? b : next++;
        }
        return t;
    }();
    return table;
}

// Code point -> byte, -1 outside the alphabet (index < 324).
inline const std::array<int16_t, 324>& codepoint_to_byte() {
    static const std::array<int16_t, 324> table = [] {
        std::array<int16_t, 324> t;
        t.fill(-1);
        for (int b = 0; b < 256; ++b) t[byte_to_codepoint()[b]] = int16_t(b);
        return t;
    }();
    return table;
}

// The bytes a vocabulary token stands for. A token with a character outside the alphabet stands for
// its own UTF-8 (Hugging Face's ByteLevel decoder does the same).
inline std::string byte_level_decode(std::string_view token) {
    std::string out;
    const auto* p = reinterpret_cast<const unsigned char*>(token.data());
    for (size_t i = 0; i < token.size();) {
        Utf8Step st = utf8_step(p + i, token.size() - i);
        if (st.state != Utf8State::Ok) return std::string(token);
        uint32_t cp = utf8_decode(p + i, st.len);
        if (cp >= codepoint_to_byte().size() || codepoint_to_byte()[cp] < 0) return std::string(token);
        out += char(codepoint_to_byte()[cp]);
        i += st.len;
    }
    return out;
}

inline std::string byte_level_encode(std::string_view bytes) {
    std::string out;
    for (unsigned char b : bytes) append_utf8(out, byte_to_codepoint()[b]);
    return out;
}

// ---- PCRE2 ---------------------------------------------------------------------------------------

using MatchData = std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)>;
inline MatchData make_match_data() { return MatchData(pcre2_match_data_create(1, nullptr), pcre2_match_data_free); }

inline std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(code, buf, sizeof buf);
    return reinterpret_cast<const char*>(buf);
}

// A compiled UTF + Unicode-property regex (JIT when available); copies share the compiled code,
// which is read-only while matching.
class Regex {
public:
    // `where` names the pattern's origin in error messages. \s and \S are rewritten to Unicode
    // White_Space, which is what they mean in Oniguruma (Hugging Face's engine); PCRE2's own \s
    // also matches U+180E.
    Regex(const std::string& pattern, const std::string& where) : where_(where) {
        std::string p;
        for (size_t i = 0; i < pattern.size(); ++i) {
            if (pattern[i] == '\\' && i + 1 < pattern.size()) {
                const char c = pattern[++i];
                if (c == 's') p += "\\p{White_Space}";
                else if (c == 'S') p += "\\P{White_Space}";
                else { p += '\\'; p += c; }
            } else {
                p += pattern[i];
            }
        }
        int err = 0;
        PCRE2_SIZE offset = 0;
        pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), PCRE2_UTF | PCRE2_UCP, &err,
                                         &offset, nullptr);
        if (!code)
            throw Error(where + ": regex does not compile: " + pcre2_message(err) + " at offset " + std::to_string(offset) +
                        " of the rewritten pattern '" + p + "'");
        code_.reset(code, pcre2_code_free);
        pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // failure just means interpreted matching
    }

    // The first match in s at or after `start` (a character boundary of well-formed UTF-8), as
    // [begin, end); false if there is none.
    // PCRE2's default match limit (10 million backtracking steps) is too small for patterns such as
    // \s*[\r\n]+ on a run of millions of spaces, which backtrack once per space: a search that hits
    // a limit is repeated with limits that grow with the text, so the cost stays linear in it.
    bool find(std::string_view s, size_t start, pcre2_match_data* md, size_t& begin, size_t& end) const {
        int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = match_with_larger_limits(s, start, md);
        if (rc == PCRE2_ERROR_NOMATCH) return false;
        if (rc < 0)
            throw Error("tokenizer: cannot split the text to encode (" + std::to_string(s.size()) + " bytes) at byte " + std::to_string(start) +
                        ": the pre-tokenizer regex of " + where_ + " failed on it (" + pcre2_message(rc) + ")");
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        begin = ov[0];
        end = ov[1];
        return true;
    }

    // Whether the character at s[pos] matches (the pattern should match one character).
    bool matches_at(std::string_view s, size_t pos) const {
        MatchData md = make_match_data();
        return pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                           PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md.get(), nullptr) >= 0;
    }

private:
    int match_with_larger_limits(std::string_view s, size_t start, pcre2_match_data* md) const {
        std::unique_ptr<pcre2_match_context, void (*)(pcre2_match_context*)> ctx(pcre2_match_context_create(nullptr), pcre2_match_context_free);
        std::unique_ptr<pcre2_jit_stack, void (*)(pcre2_jit_stack*)> stack(pcre2_jit_stack_create(32 << 10, 64 << 20, nullptr), pcre2_jit_stack_free);
        if (!ctx || !stack) throw std::bad_alloc();
        const uint64_t steps = 10000000 + 64 * uint64_t(s.size());
        pcre2_set_match_limit(ctx.get(), uint32_t(std::min<uint64_t>(steps, UINT32_MAX)));
        pcre2_set_depth_limit(ctx.get(), uint32_t(std::min<uint64_t>(steps, UINT32_MAX)));
        pcre2_set_heap_limit(ctx.get(), 1 << 18);  // KiB: 256 MiB for the interpreter's backtracking frames
        pcre2_jit_stack_assign(ctx.get(), nullptr, stack.get());
        return pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK, md, ctx.get());
    }

    std::shared_ptr<pcre2_code> code_;
    std::string where_;
};

// ---- added tokens --------------------------------------------------------------------------------

struct AddedToken {
    std::string content;
    int id = -1;
    bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Start offset of the last character of s (s non-empty, well-formed).
inline size_t last_char_start(std::string_view s) {
    size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xc0) == 0x80) --i;
    return i;
}

inline const Regex& white_space_char() {
    static const Regex re("\\p{White_Space}", "white space");
    return re;
}

// Rust's char::is_alphanumeric() || '_', which Hugging Face uses for single_word boundaries.
inline const Regex& word_char() {
    static const Regex re("[\\p{Alphabetic}\\p{N}_]", "word character");
    return re;
}

// Added tokens looked for in one form of the text (raw or normalised), leftmost-longest like the
// aho-corasick automaton of Hugging Face tokenizers.
class AddedMatcher {
public:
    void add(const AddedToken& t) {
        auto& list = by_first_byte_[static_cast<unsigned char>(t.content[0])];
        list.push_back(t);
        std::stable_sort(list.begin(), list.end(),
                         [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    }

    // Calls on_text(piece) for the non-empty text between matches and on_token(id) for each match,
    // in order. As in Hugging Face's AddedVocabulary::find_matches: a single_word token must not touch
    // word characters; lstrip/rstrip tokens also swallow the white space before/after them; the
    // search resumes after the swallowed text.
    template <class OnText, class OnToken>
    void split(std::string_view s, OnText&& on_text, OnToken&& on_token) const {
        size_t done = 0, pos = 0;
        while (pos < s.size()) {
            const AddedToken* hit = nullptr;
            for (const AddedToken& t : by_first_byte_[static_cast<unsigned char>(s[pos])])
                if (s.compare(pos, t.content.size(), t.content) == 0) { hit = &t; break; }
            if (!hit) { ++pos; continue; }
            size_t start = pos, stop = pos + hit->content.size();
            pos = stop;
            if (hit->single_word && ((start > 0 && word_char().matches_at(s, last_char_start(s.substr(0, start)))) ||
                                     (stop < s.size() && word_char().matches_at(s, stop))))
                continue;
            if (hit->lstrip)
                while (start > done && white_space_char().matches_at(s, last_char_start(s.substr(0, start))))
                    start = last_char_start(s.substr(0, start));
            if (hit->rstrip)
                while (stop < s.size() && white_space_char().matches_at(s, stop))
                    stop += utf8_step(reinterpret_cast<const unsigned char*>(s.data()) + stop, s.size() - stop).len;
            if (start > done) on_text(s.substr(done, start - done));
            on_token(hit->id);
            done = pos = stop;
        }
        if (done < s.size()) on_text(s.substr(done));
    }

private:
    std::array<std::vector<AddedToken>, 256> by_first_byte_;  // longest first
};

// ---- tokenizer.json access -----------------------------------------------------------------------

inline const nlohmann::json& json_member(const nlohmann::json& obj, const char* key, const std::string& where) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) throw Error(where + ": missing field '" + key + "'");
    return *it;
}

inline std::string json_type(const nlohmann::json& obj, const std::string& where) {
    if (!obj.is_object()) throw Error(where + ": must be an object");
    const auto& t = json_member(obj, "type", where);
    if (!t.is_string()) throw Error(where + ".type: must be a string");
    return t.get<std::string>();
}

// An optional field that must be null or hold `expected` when present.
// A value for an error message: scalars as JSON, containers by kind only (dumping an
// arbitrarily deep container recurses without bound).
inline std::string json_preview(const nlohmann::json& v) {
    if (v.is_array()) return "an array";
    if (v.is_object()) return "an object";
    std::string s = v.dump();
    return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

inline void json_require(const nlohmann::json& obj, const char* key, const nlohmann::json& expected, const std::string& where,
                         const std::string& why) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null() || *it == expected) return;
    throw Error(where + ": field '" + key + "' = " + json_preview(*it) + " is not supported (" + why + ")");
}

// GPT-2's pre-tokenizer regex, applied by ByteLevel when use_regex is true.
inline const char* gpt2_pattern() {
    return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
}


class StreamDecoder;

class Tokenizer {
public:
    // Reads a Hugging Face tokenizer.json.
    static Tokenizer load(const std::string& tokenizer_json_path) {
        return parse(detail::read_small_file(tokenizer_json_path, kMaxTokenizerFileBytes, "a tokenizer.json"), tokenizer_json_path);
    }

    // Builds a tokenizer from the text of a tokenizer.json; `name` stands for the file in messages.
    static Tokenizer parse(const std::string& json_text, const std::string& name) {
        const nlohmann::json j = detail::parse_json(json_text, name);
        if (!j.is_object()) throw Error(name + ": top level must be a JSON object");
        Tokenizer t;
        t.name_ = name;
        // encode() returns one sequence as is: no truncation, padding or post-processing (the
        // post_processor only adds special tokens and offsets, so it is not read).
        detail::json_require(j, "truncation", nullptr, name, "encode() never truncates");
        detail::json_require(j, "padding", nullptr, name, "encode() never pads");
        t.parse_model(detail::json_member(j, "model", name), name + ": model");
        t.parse_normalizer(j, name + ": normalizer");
        t.parse_added_tokens(j, name + ": added_tokens");
        t.parse_pre_tokenizer(detail::json_member(j, "pre_tokenizer", name), name + ": pre_tokenizer");
        const std::string decoder = detail::json_type(detail::json_member(j, "decoder", name), name + ": decoder");
        if (decoder != "ByteLevel") throw Error(name + ": decoder.type '" + decoder + "' is not supported (expected ByteLevel)");
        return t;
    }

    // Ids of `text` (well-formed UTF-8, else Error); no special tokens are added, but added tokens
    // written in the text (e.g. "<|im_start|>") are single ids.
    std::vector<int> encode(const std::string& text) const {
        if (size_t bad = detail::utf8_invalid_at(text); bad != std::string_view::npos)
            throw Error(name_ + ": cannot encode text that is not valid UTF-8 (byte " + std::to_string(bad) + ")");
        std::vector<int> ids;
        detail::MatchData md = detail::make_match_data();
        auto push = [&](int id) { ids.push_back(id); };
        raw_added_.split(text, [&](std::string_view raw) {
            const std::string norm = nfc_ ? detail::nfc(raw) : std::string(raw);
            normalized_added_.split(norm, [&](std::string_view piece) { pre_tokenize(piece, 0, md.get(), ids); }, push);
        }, push);
        return ids;
    }

    // Text of `ids` (Error for an id without a token). skip_special drops added tokens marked special.
    std::string decode(const std::vector<int>& ids, bool skip_special = false) const {
        std::string bytes, out;
        for (int id : ids) {
            check_id(id);
            if (!(skip_special && special_[size_t(id)])) bytes += bytes_[size_t(id)];
        }
        detail::append_utf8_lossy(out, bytes);
        return out;
    }

    // Id of a token as written in tokenizer.json (e.g. "<|im_start|>", "Ġworld"), -1 if absent.
    int token_id(const std::string& token) const {
        if (auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
        auto it = vocab_.find(token);
        return it == vocab_.end() ? -1 : it->second;
    }

    // The token of `id` as written in tokenizer.json (decode({id}) gives its text).
    std::string token_text(int id) const {
        check_id(id);
        return tokens_[size_t(id)];
    }

    // One more than the largest id (vocabulary and added tokens).
    int vocab_size() const { return int(tokens_.size()); }

private:
    friend class StreamDecoder;
    struct Merge {
        int rank;  // position in model.merges: lower merges first
        int id;    // the merged token
    };
    static constexpr int kMaxId = 1 << 24;

    std::string name_;
    std::vector<std::string> tokens_;  // [vocab_size] token as written; "" where no id
    std::vector<std::string> bytes_;   // [vocab_size] bytes each id decodes to
    std::vector<bool> has_token_, special_;
    std::unordered_map<std::string, int> vocab_;     // model.vocab (byte-level form) -> id
    std::unordered_map<std::string, int> added_ids_; // added token -> id (wins over model.vocab)
    std::unordered_map<uint64_t, Merge> merges_; // (left id << 32 | right id) -> merge
    std::array<int, 256> byte_ids_{};            // id of each byte's single-symbol token
    bool ignore_merges_ = false, nfc_ = false;
    std::vector<detail::Regex> splits_;          // pre-tokenizer regexes, applied in order
    detail::AddedMatcher raw_added_, normalized_added_;

    void check_id(int id) const {
        if (id < 0 || id >= vocab_size() || !has_token_[size_t(id)])
            throw Error(name_ + ": token id " + std::to_string(id) + " has no token (vocabulary size " +
                        std::to_string(vocab_size()) + ")");
    }

    void set_token(int id, const std::string& token, std::string bytes, const std::string& where) {
        if (size_t(id) >= tokens_.size()) {
            tokens_.resize(size_t(id) + 1);
            bytes_.resize(size_t(id) + 1);
            has_token_.resize(size_t(id) + 1);
            special_.resize(size_t(id) + 1);
        }
        if (has_token_[size_t(id)] && tokens_[size_t(id)] != token)
            throw Error(where + ": id " + std::to_string(id) + " is given to both '" + tokens_[size_t(id)] + "' and '" + token + "'");
        tokens_[size_t(id)] = token;
        bytes_[size_t(id)] = std::move(bytes);
        has_token_[size_t(id)] = true;
    }

    static int parse_id(const nlohmann::json& v, const std::string& where) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= kMaxId)
            throw Error(where + ": id must be an integer in [0, " + std::to_string(kMaxId) + "), got " + detail::json_preview(v));
        return int(v.get<int64_t>());
    }

    void parse_model(const nlohmann::json& m, const std::string& where) {
        const std::string type = detail::json_type(m, where);
        if (type != "BPE") throw Error(where + ".type '" + type + "' is not supported (expected BPE)");
        detail::json_require(m, "dropout", 0.0, where, "BPE dropout is not supported");
        detail::json_require(m, "continuing_subword_prefix", "", where, "subword prefixes are not supported");
        detail::json_require(m, "end_of_word_suffix", "", where, "word suffixes are not supported");
        detail::json_require(m, "byte_fallback", false, where, "byte-level BPE needs no byte fallback");
        // unk_token and fuse_unk are not read: every byte has a symbol, so nothing is unknown.
        ignore_merges_ = detail::JsonReader{m, where}.boolean("ignore_merges", false);

        const auto& vocab = detail::json_member(m, "vocab", where);
        if (!vocab.is_object()) throw Error(where + ".vocab: must be an object of token -> id");
        for (auto it = vocab.begin(); it != vocab.end(); ++it) {
            const int id = parse_id(it.value(), where + ".vocab['" + it.key() + "']");
            set_token(id, it.key(), detail::byte_level_decode(it.key()), where + ".vocab");
            vocab_.emplace(it.key(), id);
        }
        for (int b = 0; b < 256; ++b) {
            std::string sym;
            detail::append_utf8(sym, detail::byte_to_codepoint()[size_t(b)]);
            auto it = vocab_.find(sym);
            if (it == vocab_.end())
                throw Error(where + ".vocab: lacks the byte-level symbol '" + sym + "' of byte " + std::to_string(b) +
                            " (only byte-level BPE is supported)");
            byte_ids_[size_t(b)] = it->second;
        }

        const auto& merges = detail::json_member(m, "merges", where);
        if (!merges.is_array()) throw Error(where + ".merges: must be a list");
        merges_.reserve(merges.size());
        for (size_t i = 0; i < merges.size(); ++i) {
            const std::string w = where + ".merges[" + std::to_string(i) + "]";
            const auto& e = merges[i];
            std::string a, b;
            if (e.is_string()) {  // "left right"
                const std::string s = e.get<std::string>();
                const size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    throw Error(w + ": '" + s + "' must be two tokens separated by one space");
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["left", "right"]
                a = e[0].get<std::string>();
                b = e[1].get<std::string>();
            } else {
                throw Error(w + ": must be a string \"left right\" or a pair [\"left\", \"right\"]");
            }
            auto ia = vocab_.find(a), ib = vocab_.find(b), ic = vocab_.find(a + b);
            for (auto [it, tok] : {std::pair{ia, a}, std::pair{ib, b}, std::pair{ic, a + b}})
                if (it == vocab_.end()) throw Error(w + ": token '" + tok + "' is not in model.vocab");
            // A repeated pair keeps its last rank, as in Hugging Face.
            merges_[uint64_t(uint32_t(ia->second)) << 32 | uint32_t(ib->second)] = Merge{int(i), ic->second};
        }
    }

    void parse_added_tokens(const nlohmann::json& j, const std::string& where) {
        auto it = j.find("added_tokens");
        if (it == j.end() || it->is_null()) return;
        if (!it->is_array()) throw Error(where + ": must be a list");
        for (size_t i = 0; i < it->size(); ++i) {
            const std::string w = where + "[" + std::to_string(i) + "]";
            const auto& e = (*it)[i];
            if (!e.is_object()) throw Error(w + ": must be an object");
            detail::AddedToken t;
            t.id = parse_id(detail::json_member(e, "id", w), w);
            const auto& content = detail::json_member(e, "content", w);
            if (!content.is_string() || content.get<std::string>().empty()) throw Error(w + ".content: must be a non-empty string");
            t.content = content.get<std::string>();
            detail::JsonReader r{e, w};
            t.special = r.boolean("special", false);
            t.single_word = r.boolean("single_word", false);
            t.lstrip = r.boolean("lstrip", false);
            t.rstrip = r.boolean("rstrip", false);
            t.normalized = r.boolean("normalized", !t.special);
            set_token(t.id, t.content, t.content, w);
            special_[size_t(t.id)] = t.special;
            added_ids_[t.content] = t.id;
            if (t.normalized) {  // looked for in the normalised text
                if (nfc_) t.content = detail::nfc(t.content);
                normalized_added_.add(t);
            } else {
                raw_added_.add(t);
            }
        }
    }

    void parse_normalizer(const nlohmann::json& j, const std::string& where) {
        auto it = j.find("normalizer");
        if (it == j.end() || it->is_null()) return;
        const std::string type = detail::json_type(*it, where);
        if (type != "NFC") throw Error(where + ".type '" + type + "' is not supported (expected NFC or null)");
        nfc_ = true;
    }

    void parse_pre_tokenizer(const nlohmann::json& p, const std::string& where) {
        std::vector<std::pair<const nlohmann::json*, std::string>> steps;
        if (detail::json_type(p, where) == "Sequence") {
            const auto& list = detail::json_member(p, "pretokenizers", where);
            if (!list.is_array()) throw Error(where + ".pretokenizers: must be a list");
            for (size_t i = 0; i < list.size(); ++i) steps.push_back({&list[i], where + ".pretokenizers[" + std::to_string(i) + "]"});
        } else {
            steps.push_back({&p, where});
        }
        bool byte_level = false;
        for (const auto& [step, w] : steps) {
            const std::string type = detail::json_type(*step, w);
            if (byte_level) throw Error(w + ": " + type + " after ByteLevel is not supported (ByteLevel must come last)");
            if (type == "Split") {
                detail::json_require(*step, "behavior", "Isolated", w, "only Isolated is supported");
                detail::json_require(*step, "invert", false, w, "inverted splits are not supported");
                const auto& pattern = detail::json_member(*step, "pattern", w);
                if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string())
                    throw Error(w + ".pattern: must be {\"Regex\": \"...\"} (String patterns are not supported)");
                splits_.emplace_back(pattern["Regex"].get<std::string>(), w + ".pattern.Regex");
            } else if (type == "ByteLevel") {
                detail::JsonReader r{*step, w};
                if (r.boolean("add_prefix_space", true))
                    throw Error(w + ".add_prefix_space: true (or missing) is not supported; Qwen uses false");
                if (r.boolean("use_regex", true)) splits_.emplace_back(detail::gpt2_pattern(), w + " (GPT-2 regex)");
                byte_level = true;
            } else {
                throw Error(w + ".type '" + type + "' is not supported (expected Split, ByteLevel or a Sequence of them)");
            }
        }
        if (!byte_level) throw Error(where + ": has no ByteLevel step (only byte-level BPE is supported)");
    }

    // Splits `s` by regex `stage` and the following ones (matches and the gaps between them are
    // pieces, as Split with behavior Isolated), then BPE-encodes the pieces.
    void pre_tokenize(std::string_view s, size_t stage, pcre2_match_data* md, std::vector<int>& ids) const {
        if (stage == splits_.size()) return bpe(s, ids);
        size_t pos = 0, done = 0, begin, end;
        while (pos < s.size() && splits_[stage].find(s, pos, md, begin, end)) {
            if (begin == end) {  // empty match: no piece; step over one character
                pos = end + detail::utf8_step(reinterpret_cast<const unsigned char*>(s.data()) + end, s.size() - end).len;
                continue;
            }
            if (begin > done) pre_tokenize(s.substr(done, begin - done), stage + 1, md, ids);
            pre_tokenize(s.substr(begin, end - begin), stage + 1, md, ids);
            done = pos = end;
        }
        if (done < s.size()) pre_tokenize(s.substr(done), stage + 1, md, ids);
    }

    // BPE of one piece: one symbol per byte, then the lowest-ranked adjacent pair is merged until no
    // pair has a merge (a priority queue of candidate pairs, stale entries skipped, as Hugging Face).
    void bpe(std::string_view piece, std::vector<int>& ids) const {
        if (ignore_merges_) {
            auto it = vocab_.find(detail::byte_level_encode(piece));
            if (it != vocab_.end()) return ids.push_back(it->second);
        }
        struct Symbol {
            int id, prev, next;  // token id; neighbours' positions, -1 at the ends
            bool alive;          // false once merged into its left neighbour
        };
        const int n = int(piece.size());
        std::vector<Symbol> sym;
        sym.reserve(piece.size());
        for (int i = 0; i < n; ++i) sym.push_back({byte_ids_[static_cast<unsigned char>(piece[size_t(i)])], i - 1, i + 1 < n ? i + 1 : -1, true});
        auto merge_of = [&](const Symbol& left) {
            return merges_.find(uint64_t(uint32_t(left.id)) << 32 | uint32_t(sym[size_t(left.next)].id));
        };
        struct Candidate {
            int rank, pos, id;
            bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }  // min-heap
        };
        std::priority_queue<Candidate> queue;
        auto consider = [&](int pos) {
            if (pos < 0 || sym[size_t(pos)].next < 0) return;
            if (auto it = merge_of(sym[size_t(pos)]); it != merges_.end()) queue.push({it->second.rank, pos, it->second.id});
        };
        for (int i = 0; i + 1 < n; ++i) consider(i);
        while (!queue.empty()) {
            const Candidate c = queue.top();
            queue.pop();
            Symbol& left = sym[size_t(c.pos)];
            if (!left.alive || left.next < 0) continue;
            auto it = merge_of(left);
            if (it == merges_.end() || it->second.id != c.id) continue;  // the pair changed since queued
            Symbol& right = sym[size_t(left.next)];
            left.id = c.id;
            right.alive = false;
            left.next = right.next;
            if (left.next >= 0) sym[size_t(left.next)].prev = c.pos;
            consider(left.prev);
            consider(c.pos);
        }
        for (int i = 0; i >= 0 && i < n; i = sym[size_t(i)].next) ids.push_back(sym[size_t(i)].id);
    }
};

// Incremental decoding for generation: push() returns the text completed by each new id, holding
// back the bytes of a character that is not finished yet, so pushes + flush() == decode(all ids).
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false)
        : tok_(&tokenizer), skip_special_(skip_special) {}

    std::string push(int id) {
        tok_->check_id(id);
        if (skip_special_ && tok_->special_[size_t(id)]) return {};
        pending_ += tok_->bytes_[size_t(id)];
        const size_t n = detail::utf8_complete_prefix(pending_);
        std::string out;
        detail::append_utf8_lossy(out, std::string_view(pending_).substr(0, n));
        pending_.erase(0, n);
        return out;
    }

    // The held-back bytes (an unfinished character becomes U+FFFD); the decoder is then empty.
    std::string flush() {
        std::string out;
        detail::append_utf8_lossy(out, pending_);
        pending_.clear();
        return out;
    }

private:
    const Tokenizer* tok_;
    bool skip_special_;
    std::string pending_;  // at most 3 bytes: a valid but unfinished character
};

}  // namespace deepstack::detail
