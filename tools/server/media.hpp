// tools/server/media.hpp - the images and videos of a chat request: base64 `data:` URLs decoded in
// memory, `file://` URLs resolved inside one allowed folder (symbolic links and ".." resolved
// first, so neither can lead outside it). The server never fetches http(s) URLs.
#pragma once
#include "api_error.hpp"

#include <deepstack/image.hpp>

#include <cctype>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace deepstack::server {

// Where a request's media may come from, and how large an image may be.
struct MediaPolicy {
    std::string allowed_dir;                // canonical folder file:// URLs must lie in; empty: file:// refused
    int64_t max_image_pixels = 16777216;    // width * height of one decoded image
};

// Decodes base64 text (standard or URL-safe alphabet, padding optional, no whitespace) into `out`;
// false when the text is not base64.
inline bool decode_base64(std::string_view text, std::vector<uint8_t>& out) {
    auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+' || c == '-') return 62;
        if (c == '/' || c == '_') return 63;
        return -1;
    };
    while (!text.empty() && text.back() == '=') text.remove_suffix(1);
    if (text.size() % 4 == 1) return false;
    out.clear();
    out.reserve(text.size() / 4 * 3 + 2);
    uint32_t bits = 0;
    int count = 0;
    for (char c : text) {
        const int v = value(c);
        if (v < 0) return false;
        bits = bits << 6 | uint32_t(v);
        if (++count == 4) {
            out.push_back(uint8_t(bits >> 16)), out.push_back(uint8_t(bits >> 8)), out.push_back(uint8_t(bits));
            bits = 0, count = 0;
        }
    }
    if (count == 2) out.push_back(uint8_t(bits >> 4));
    if (count == 3) out.push_back(uint8_t(bits >> 10)), out.push_back(uint8_t(bits >> 2));
    return true;
}

inline bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// The URL's scheme in lower case ("data", "file", "https", ...); empty without one.
inline std::string url_scheme(std::string_view url) {
    const size_t colon = url.find(':');
    if (colon == std::string_view::npos || colon == 0 || colon > 16) return "";
    std::string scheme;
    for (char c : url.substr(0, colon)) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') return "";
        scheme += char(std::tolower(static_cast<unsigned char>(c)));
    }
    return scheme;
}

// The decoded bytes of a base64 data: URL ("data:<type>;base64,<data>"); `param` names the field.
inline std::vector<uint8_t> data_url_bytes(std::string_view url, const std::string& param) {
    const size_t comma = url.find(',');
    if (comma == std::string_view::npos) throw bad_request("data: URL without a comma before its data", param);
    const std::string_view meta = url.substr(5, comma - 5);
    if (meta.size() < 7 || meta.substr(meta.size() - 7) != ";base64")
        throw bad_request("data: URLs must be base64-encoded (data:<type>;base64,...)", param);
    std::vector<uint8_t> bytes;
    if (!decode_base64(url.substr(comma + 1), bytes)) throw bad_request("data: URL holds invalid base64", param);
    if (bytes.empty()) throw bad_request("data: URL holds no data", param);
    return bytes;
}

inline int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// The canonical path of a file:// URL, which must name an existing file inside policy.allowed_dir.
inline std::string media_file_path(std::string_view url, const MediaPolicy& policy, const std::string& param) {
    if (policy.allowed_dir.empty())
        throw bad_request("file:// URLs are refused: the server was started without --allowed-media-dir", param, "media_not_allowed");
    std::string_view rest = url.substr(7);
    if (starts_with(rest, "localhost/")) rest.remove_prefix(9);
    if (!starts_with(rest, "/")) throw bad_request("file:// URL must hold an absolute path (file:///path)", param);
    std::string path;
    for (size_t i = 0; i < rest.size(); ++i) {
        if (rest[i] == '%' && i + 2 < rest.size() && hex_digit(rest[i + 1]) >= 0 && hex_digit(rest[i + 2]) >= 0) {
            path += char(hex_digit(rest[i + 1]) * 16 + hex_digit(rest[i + 2]));
            i += 2;
        } else {
            path += rest[i];
        }
    }
    if (path.find('\0') != std::string::npos) throw bad_request("file:// URL holds a NUL byte", param);
    char resolved[PATH_MAX];
    if (!::realpath(path.c_str(), resolved)) throw bad_request("file:// URL names no readable file inside the allowed media folder", param);
    const std::string canonical = resolved;
    if (!starts_with(canonical, policy.allowed_dir + "/"))
        throw bad_request("file:// URL points outside the allowed media folder", param, "media_not_allowed");
    return canonical;
}

// The refusal of a URL the server does not read (http, https, ftp, ...).
inline ApiError unfetched_url(const std::string& scheme, const std::string& param) {
    return bad_request(scheme.empty() ? std::string("media URL has no scheme (use data: or file://)")
                                      : "the server never fetches " + scheme + ": URLs; send the media inline as a base64 data: URL" +
                                            " (or a file:// URL inside --allowed-media-dir)",
                       param, "url_not_fetched");
}

// Decodes the image of an image_url part.
inline Image image_from_url(std::string_view url, const MediaPolicy& policy, const std::string& param) {
    const std::string scheme = url_scheme(url);
    try {
        if (scheme == "data") {
            const std::vector<uint8_t> bytes = data_url_bytes(url, param);
            return decode_image(bytes.data(), bytes.size(), param, policy.max_image_pixels);
        }
        if (scheme == "file") return load_image(media_file_path(url, policy, param), policy.max_image_pixels);
    } catch (const Error& e) {
        throw bad_request(e.what(), param, "invalid_image");
    }
    throw unfetched_url(scheme, param);
}

// The video file (or frame folder, or frame list) of a video_url part: file:// only.
inline std::string video_path_from_url(std::string_view url, const MediaPolicy& policy, const std::string& param) {
    const std::string scheme = url_scheme(url);
    if (scheme == "file") return media_file_path(url, policy, param);
    if (scheme == "data")
        throw bad_request("data: videos are not accepted; give the video as a file:// URL inside --allowed-media-dir", param);
    throw unfetched_url(scheme, param);
}

}  // namespace deepstack::server
