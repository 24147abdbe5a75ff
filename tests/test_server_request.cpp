// deepstack-server's parts without HTTP (tools/server/): the chat request parser (messages to a
// Request with history, sampling fields, refusals naming the field), base64 data: URLs, file://
// URLs kept inside the allowed folder, and the stop-string matcher's hold-back while streaming.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include "../tools/server/chat_request.hpp"
#include "../tools/server/responses.hpp"
#include "../tools/server/stop_strings.hpp"

#include <unistd.h>

#include <filesystem>

using namespace deepstack;
namespace dss = deepstack::server;
namespace fs = std::filesystem;

namespace {

// The dss::ApiError of parsing `body`; fails the test when it parses.
dss::ApiError refusal(const std::string& body, const dss::RequestLimits& limits = {}) {
    try {
        dss::parse_chat_request(body, limits);
    } catch (const dss::ApiError& e) {
        return e;
    }
    FAIL("parsed: " << body);
    return dss::bad_request("");
}

}  // namespace

TEST_CASE("chat request: messages become the system message, history turns and the last user turn") {
    const std::string png = "data:image/png;base64," + base64_encode(read_bytes(kImage));
    const nlohmann::json body = {
        {"messages",
         {{{"role", "developer"}, {"content", "Be brief."}},
          {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "What is it?"}}, {{"type", "image_url"}, {"image_url", {{"url", png}}}},
                                          {{"type", "text"}, {"text", "Say it."}}}}},
          {{"role", "assistant"}, {"content", nullptr}},
          {{"role", "system"}, {"content", "Shorter."}},
          {{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", png}}, {{"type", "text"}, {"text", "And this?"}}}}}}},
        {"max_tokens", 10}, {"max_completion_tokens", 20}, {"min_tokens", 3}, {"ignore_eos", true}, {"top_k", -1}, {"top_p", 0.5},
        {"temperature", 0}, {"seed", -1}, {"presence_penalty", 1.5}, {"repetition_penalty", 1.1}, {"stop", "END"}, {"stream", true},
        {"stream_options", {{"include_usage", true}}}, {"user", "ignored"}, {"frequency_penalty", 0}};
    const dss::ChatRequest r = dss::parse_chat_request(body.dump(), {});
    CHECK(r.request.system == "Be brief.");
    REQUIRE(r.request.history.size() == 3);
    CHECK(r.request.history[0].role == "user");
    CHECK(r.request.history[0].text == "What is it?\nSay it.");
    REQUIRE(r.request.history[0].images.size() == 1);
    CHECK(r.request.history[0].images[0].pixels.width == 80);
    CHECK(r.request.history[1].role == "assistant");
    CHECK(r.request.history[1].text.empty());
    CHECK(r.request.history[2].role == "system");
    CHECK(r.request.prompt == "And this?");
    CHECK(r.request.images.size() == 1);
    const Sampling& s = r.request.sampling;
    CHECK(*s.max_new_tokens == 20);
    CHECK(*s.min_new_tokens == 3);
    CHECK(*s.ignore_eos);
    CHECK(*s.top_k == 0);
    CHECK(*s.top_p == 0.5f);
    CHECK(*s.temperature == 0.f);
    CHECK(*s.seed == ~uint64_t(0));
    CHECK(*s.presence_penalty == 1.5f);
    CHECK(r.stop == std::vector<std::string>{"END"});
    CHECK(r.stream);
    CHECK(r.include_usage);
}

TEST_CASE("chat request: refusals are 400 with the field at fault") {
    const std::pair<const char*, const char*> cases[] = {
        {"{", "not valid JSON"},
        {"[]", "the request body must be a JSON object, not an array"},
        {R"({"messages": []})", "'messages' is empty"},
        {R"({"messages": [{"role": "tool", "content": "x"}]})", "'messages[0].role' = 'tool' is not supported"},
        {R"({"messages": [{"role": "user", "content": 5}]})", "'messages[0].content' must be a string or an array of content parts, not a number"},
        {R"({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})", "'messages[0].content[0].type' = 'input_audio' is not supported"},
        {R"({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AA=="}]}, {"role": "user", "content": "x"}]})",
         "only user messages may hold images"},
        {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "'max_tokens' = 0 is outside [1, 32768]"},
        {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e3})", "'max_tokens' must be an integer, not a number"},
        {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "min_tokens": 5})", "'min_tokens' = 5 is above max_tokens = 4"},
        {R"({"messages": [{"role": "user", "content": "x"}], "top_p": 0})", "'top_p' = 0 is outside (0, 1]"},
        {R"({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]})", "'stop' holds 5 strings; at most 4"},
        {R"({"messages": [{"role": "user", "content": "x"}], "stop": [""]})", "'stop' strings must not be empty"},
        {R"({"messages": [{"role": "user", "content": "x"}], "n": 2})", "'n' must be 1"},
        {R"({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 0.5})", "'frequency_penalty' is not supported"},
        {R"({"messages": [{"role": "user", "content": "x"}], "stream": "yes"})", "'stream' must be a boolean, not a string"},
        {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://host/a.png"}}]}]})", "never fetches ftp: URLs"},
        {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]})", "must be base64-encoded"},
        {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/hostname"}}]}]})",
         "started without --allowed-media-dir"},
        {R"({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]})",
         "data: videos are not accepted"},
    };
    for (const auto& [body, message] : cases) {
        CAPTURE(body);
        const dss::ApiError e = refusal(body);
        CHECK(e.status == 400);
        CHECK(e.type == "invalid_request_error");
        CHECK(std::string(e.what()).find(message) != std::string::npos);
    }
    CHECK(refusal(R"({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})").param == "temperature");
    CHECK(refusal(R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})").param == "messages[0].content[0].text");
    const dss::ApiError nested = refusal(std::string(200, '[') + std::string(200, ']'));
    CHECK(std::string(nested.what()).find("nested deeper than") != std::string::npos);
    const nlohmann::json error = dss::error_json(refusal("{"));
    CHECK(error["error"]["code"] == "invalid_json");
    CHECK(error["error"]["param"].is_null());
}

TEST_CASE("chat request: base64 in both alphabets, with and without padding; bad text refused") {
    std::vector<uint8_t> out;
    CHECK(dss::decode_base64("aGVsbG8=", out));
    CHECK(std::string(out.begin(), out.end()) == "hello");
    CHECK(dss::decode_base64("aGVsbG8", out));
    CHECK(std::string(out.begin(), out.end()) == "hello");
    CHECK(dss::decode_base64("-_-_", out));
    CHECK(out == std::vector<uint8_t>{0xfb, 0xff, 0xbf});
    CHECK_FALSE(dss::decode_base64("aGVsb G8=", out));
    CHECK_FALSE(dss::decode_base64("a", out));
}

TEST_CASE("chat request: file:// URLs resolve inside the allowed folder only") {
    const fs::path root = fs::temp_directory_path() / ("deepstack_test_media_" + std::to_string(::getpid()));
    fs::create_directories(root / "media" / "sub");
    fs::create_directories(root / "secret");
    fs::copy_file(kImage, root / "media" / "sub" / "a b.png");
    fs::copy_file(kImage, root / "secret" / "s.png");
    fs::create_symlink(root / "secret" / "s.png", root / "media" / "link.png");
    dss::MediaPolicy policy;
    policy.allowed_dir = fs::canonical(root / "media").string();
    const std::string media = "file://" + (root / "media").string();
    CHECK(dss::image_from_url(media + "/sub/a%20b.png", policy, "p").width == 80);
    CHECK(dss::image_from_url(media + "/sub/../sub/a b.png", policy, "p").width == 80);
    for (const std::string& url : {media + "/../secret/s.png", media + "/link.png", media + "/sub/../../secret/s.png"}) {
        CAPTURE(url);
        try {
            dss::image_from_url(url, policy, "p");
            FAIL("read outside the folder");
        } catch (const dss::ApiError& e) {
            CHECK(std::string(e.what()).find("outside the allowed media folder") != std::string::npos);
        }
    }
    CHECK_THROWS_AS(dss::image_from_url(media + "/missing.png", policy, "p"), dss::ApiError);
    policy.max_image_pixels = 100;
    try {
        dss::image_from_url(media + "/sub/a b.png", policy, "p");
        FAIL("an image over the pixel limit decoded");
    } catch (const dss::ApiError& e) {
        CHECK(std::string(e.what()).find("above the decoder limit") != std::string::npos);
    }
    fs::remove_all(root);
}

TEST_CASE("stop strings: text that may start one is held back; the reply ends before the first match") {
    dss::StopMatcher m({"o wor", "zz"});
    CHECK(m.push("Hel") == "Hel");
    CHECK(m.push("lo w") == "l");  // "o w" may begin "o wor"
    CHECK(m.push("orld") == "");
    CHECK(m.stopped());
    CHECK(m.push("more") == "");
    CHECK(m.flush() == "");

    dss::StopMatcher no_match({"xyz"});
    CHECK(no_match.push("abx") == "ab");
    CHECK(no_match.push("y") == "");
    CHECK(no_match.push("!") == "xy!");
    CHECK(no_match.push("x") == "");
    CHECK(no_match.flush() == "x");
    CHECK_FALSE(no_match.stopped());

    dss::StopMatcher earliest({"cd", "b"});
    CHECK(earliest.push("abcd") == "a");

    dss::StopMatcher none({});
    CHECK(none.push("anything") == "anything");
}
