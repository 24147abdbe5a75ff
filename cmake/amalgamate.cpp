// Writes include/deepstack.hpp and every module it includes (in include order) as one
// self-contained header. Local includes ("...") are inlined: a header with #pragma once once, one
// without (the kernel level bodies, expanded once per SIMD level) at every inclusion; system
// includes stay.
// usage: deepstack-amalgamate include/deepstack.hpp OUT.hpp
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>

namespace {

std::set<std::string> seen;

std::string dir_of(const std::string& path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

bool has_pragma_once(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line))
        if (line == "#pragma once") return true;
    return false;
}

void inline_file(const std::string& path, std::ostream& out) {
    if (has_pragma_once(path) && !seen.insert(path).second) return;
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot open");
    out << "// ---- " << path.substr(path.rfind("include/") == std::string::npos ? 0 : path.rfind("include/") + 8) << " ----\n";
    std::string line;
    while (std::getline(in, line)) {
        const auto first = line.find_first_not_of(" \t");
        const std::string body = first == std::string::npos ? "" : line.substr(first);
        if (body == "#pragma once") continue;
        if (body.rfind("#include \"", 0) == 0) {
            const auto end = body.find('"', 10);
            inline_file(dir_of(path) + "/" + body.substr(10, end - 10), out);
            continue;
        }
        out << line << '\n';
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: deepstack-amalgamate include/deepstack.hpp OUT.hpp\n";
        return 1;
    }
    try {
        std::ostringstream body;
        inline_file(argv[1], body);
        std::ofstream out(argv[2]);
        out << "// deepstack.hpp - single-header build of the deepstack library (generated; do not edit).\n"
               "// Needs: nlohmann/json, stb_image (+ libstb), utf8proc, PCRE2 (8-bit), OpenMP; FFmpeg for video\n"
               "// files when DEEPSTACK_WITH_FFMPEG is defined.\n"
               "#pragma once\n"
            << body.str();
        if (!out) throw std::runtime_error(std::string(argv[2]) + ": write failed");
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << '\n';
        return 1;
    }
}
