// libFuzzer target: deepstack-server's request parser (tools/server/chat_request.hpp) on arbitrary
// request bodies: malformed JSON, wrong types, unknown roles, bad base64 and undecodable images in
// data: URLs, file:// and http URLs. It must either refuse with a 400 ApiError naming the problem
// or return a request within its limits; any other exception, crash or hang is a finding.
#include "common.hpp"

#include "../../tools/server/chat_request.hpp"
#include "../../tools/server/responses.hpp"

using namespace deepstack;
using namespace deepstack::server;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    RequestLimits limits;
    limits.max_context = 4096;
    limits.max_images = 4;
    limits.media.max_image_pixels = 1 << 20;  // file:// stays refused: no allowed folder
    const std::string body(reinterpret_cast<const char*>(data), size);
    try {
        const ChatRequest r = parse_chat_request(body, limits);
        const Request& q = r.request;
        FUZZ_CHECK(r.stop.size() <= size_t(limits.max_stop));
        size_t images = q.images.size();
        for (const Turn& t : q.history) {
            FUZZ_CHECK(t.role == "user" || t.role == "assistant" || t.role == "system");
            FUZZ_CHECK(t.role == "user" || t.images.empty());
            images += t.images.size();
        }
        FUZZ_CHECK(images <= size_t(limits.max_images));
        for (const ImageInput& image : q.images) FUZZ_CHECK(int64_t(image.pixels.width) * image.pixels.height <= limits.media.max_image_pixels);
        FUZZ_CHECK(!q.video);  // videos come only from file:// URLs
        const Sampling& s = q.sampling;
        FUZZ_CHECK(!s.max_new_tokens || (*s.max_new_tokens >= 1 && *s.max_new_tokens <= limits.max_context));
        FUZZ_CHECK(!s.min_new_tokens || *s.min_new_tokens >= 0);
        FUZZ_CHECK(!s.temperature || (*s.temperature >= 0 && *s.temperature <= 2));
        FUZZ_CHECK(!s.top_p || (*s.top_p > 0 && *s.top_p <= 1));
    } catch (const ApiError& e) {
        FUZZ_CHECK(e.status == 400);
        FUZZ_CHECK(std::string(e.what()).size() > 0);
        FUZZ_CHECK(json_text(error_json(e)).size() > 0);
    }
    return 0;
}
