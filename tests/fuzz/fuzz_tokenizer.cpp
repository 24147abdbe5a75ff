// libFuzzer target: tokenizer.json parsing and text encoding. First byte even: the rest is a
// tokenizer.json for Tokenizer::parse (then it encodes a fixed sentence). Odd: the rest is text for
// a fixed small byte-level BPE tokenizer: encode must give an Error for invalid UTF-8 and otherwise
// ids that decode back to the text (exactly, when the text is ASCII, which NFC leaves alone).
#include "common.hpp"

using namespace deepstack;
using namespace deepstack::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    deepstack_fuzz::Reader in{data, size};
    const uint8_t mode = in.byte();
    const std::string text = in.rest();
    if (!(mode & 1)) {
        try {
            const Tokenizer t = Tokenizer::parse(text, "fuzz-tokenizer.json");
            const std::vector<int> ids = t.encode("Hello world, 123 <|im_start|>\xc3\xa9t\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd");
            for (int id : ids) FUZZ_CHECK(id >= 0 && id < t.vocab_size());
            (void)t.decode(ids);
        } catch (const Error&) {
        }
        return 0;
    }
    const Tokenizer& t = deepstack_fuzz::small_tokenizer();
    const bool valid = detail::utf8_invalid_at(text) == std::string_view::npos;
    std::vector<int> ids;
    try {
        ids = t.encode(text);
    } catch (const Error&) {
        FUZZ_CHECK(!valid);
        return 0;
    }
    FUZZ_CHECK(valid);
    for (int id : ids) FUZZ_CHECK(id >= 0 && id < t.vocab_size());
    const std::string back = t.decode(ids);
    FUZZ_CHECK(detail::utf8_invalid_at(back) == std::string_view::npos);
    const bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return (unsigned char)c < 0x80; });
    if (ascii) FUZZ_CHECK(back == text);
    // Streaming decode gives the same text.
    StreamDecoder sd(t);
    std::string streamed;
    for (int id : ids) streamed += sd.push(id);
    streamed += sd.flush();
    FUZZ_CHECK(streamed == back);
    return 0;
}
