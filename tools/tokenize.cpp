// deepstack-tokenize TOKENIZER_JSON: reads one JSON string per stdin line and writes its ids (no
// special tokens added) as a JSON array on its own line.
#include <deepstack/advanced.hpp>

#include <iostream>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: deepstack-tokenize TOKENIZER_JSON < lines-of-json-strings\n";
        return 1;
    }
    try {
        const auto tok = deepstack::advanced::Tokenizer::load(argv[1]);
        std::string line;
        for (size_t n = 1; std::getline(std::cin, line); ++n) {
            nlohmann::json text;
            try {
                text = nlohmann::json::parse(line);
            } catch (const std::exception& e) {
                throw deepstack::Error("stdin line " + std::to_string(n) + ": not valid JSON (" + e.what() + ")");
            }
            if (!text.is_string()) throw deepstack::Error("stdin line " + std::to_string(n) + ": must be a JSON string");
            std::cout << nlohmann::json(tok.encode(text.get<std::string>())).dump() << std::endl;  // flushed: callers may wait per line
        }
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << '\n';
        return 1;
    }
    return 0;
}
