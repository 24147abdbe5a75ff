// tools/server/stop_strings.hpp - ends a streamed reply before the first of its stop strings. Text
// that could be the start of a stop string is held back until the next piece shows whether it is.
#pragma once
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace deepstack::server {

class StopMatcher {
public:
    explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

    // Takes the next piece of the reply; returns the text that may be sent now. After a stop string
    // is found, stopped() is true and the text before it has been returned.
    std::string push(std::string_view piece) {
        if (stopped_) return {};
        held_ += piece;
        size_t first = std::string::npos;
        for (const std::string& s : stops_) first = std::min(first, held_.find(s));
        if (first != std::string::npos) {
            stopped_ = true;
            std::string out = held_.substr(0, first);
            held_.clear();
            return out;
        }
        const size_t keep = longest_partial_match();
        std::string out = held_.substr(0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
        return out;
    }

    // The text held back at the end of the reply (it was no stop string after all).
    std::string flush() {
        std::string out;
        out.swap(held_);
        return stopped_ ? std::string() : out;
    }

    bool stopped() const { return stopped_; }

private:
    // Length of the longest end of held_ that begins some stop string.
    size_t longest_partial_match() const {
        size_t best = 0;
        for (const std::string& s : stops_)
            for (size_t n = std::min(s.size() - 1, held_.size()); n > best; --n)
                if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
                    best = n;
                    break;
                }
        return best;
    }

    std::vector<std::string> stops_;
    std::string held_;
    bool stopped_ = false;
};

}  // namespace deepstack::server
