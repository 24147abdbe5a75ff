// deepstack/decode_batcher.hpp - decode steps shared by concurrent replies: the threads of an
// Engine's generate() calls hand in their next token, and one decoder pass
// (Session::decode_batch) runs the tokens of all of them, reading the weights once per step.
#pragma once
#include "model.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>

namespace deepstack::detail {

// A reply takes a Seat once its prompt is prefilled and leaves it when it ends (done, stopped by
// its callback, or failed). At each decode step its thread hands in (session, token) and waits.
// Once every seated sequence has handed in its token (or left), one of the waiting threads runs
// the step for all of them (at most max_batch, the oldest first) and gives each its logits: so
// concurrent replies batch without a timer, and a lone reply steps at once. Prefills
// (exclusive()) and steps never run at the same time, as their OpenMP regions would share the
// cores: a prefill asking to run goes before the next step, so a new reply joins between two
// steps. One sequence's error (its context is full, say) is that sequence's alone: a failed step
// runs again one sequence at a time. Sampling and the text callbacks run in each reply's own
// thread between steps, so a callback that blocks holds up the step of every seated reply.
// A thread already inside the batcher (a callback calling generate() again) bypasses it.
class DecodeBatcher {
public:
    explicit DecodeBatcher(int max_batch) : max_batch_(size_t(std::max(1, max_batch))) {}
    DecodeBatcher(const DecodeBatcher&) = delete;
    DecodeBatcher& operator=(const DecodeBatcher&) = delete;

    // Steps run so far and the tokens they decoded (tokens / steps: the mean batch).
    struct Stats {
        int64_t steps = 0, tokens = 0;
    };
    Stats stats() const {
        std::lock_guard<std::mutex> guard(mutex_);
        return stats_;
    }

    // Whether the calling thread is inside this or another batcher (in a prefill or seated).
    static bool inside() { return depth() > 0; }

    // Runs fn() - a prefill - while no step and no other prefill runs; returns its result.
    template <typename Fn>
    auto exclusive(Fn&& fn) -> decltype(fn()) {
        std::unique_lock<std::mutex> lock(mutex_);
        ++prefills_waiting_;
        changed_.wait(lock, [&] { return !busy_; });
        --prefills_waiting_;
        busy_ = true;
        lock.unlock();
        struct Release {
            DecodeBatcher& b;
            ~Release() {
                --depth();
                std::lock_guard<std::mutex> guard(b.mutex_);
                b.busy_ = false;
                b.changed_.notify_all();
            }
        };
        ++depth();
        const Release release{*this};
        return fn();
    }

    // A sequence's place in the steps, from its first decode step to the end of its reply.
    class Seat {
    public:
        explicit Seat(DecodeBatcher& b) : b_(b) {
            std::lock_guard<std::mutex> guard(b_.mutex_);
            ++b_.seated_;
            ++depth();
        }
        ~Seat() {
            std::lock_guard<std::mutex> guard(b_.mutex_);
            --b_.seated_;
            --depth();
            b_.changed_.notify_all();  // the others may be all that is left to wait for
        }
        Seat(const Seat&) = delete;
        Seat& operator=(const Seat&) = delete;

        // Appends `token` to `session` in the next step; returns its logits [V] (or throws this
        // sequence's error).
        std::vector<float> decode(Session& session, int token) { return b_.decode(session, token); }

    private:
        DecodeBatcher& b_;
    };

private:
    // A token handed in, on its thread's stack until the step that runs it is done.
    struct Entry {
        Session* session = nullptr;
        int token = 0;
        std::vector<float> logits;
        std::exception_ptr error;
        bool done = false;
    };

    static int& depth() {
        static thread_local int d = 0;
        return d;
    }

    bool step_ready() const {
        return !busy_ && prefills_waiting_ == 0 && !waiting_.empty() && waiting_.size() >= std::min(seated_, max_batch_);
    }

    std::vector<float> decode(Session& session, int token) {
        Entry entry;
        entry.session = &session, entry.token = token;
        std::unique_lock<std::mutex> lock(mutex_);
        waiting_.push_back(&entry);
        for (;;) {
            changed_.wait(lock, [&] { return entry.done || step_ready(); });
            if (entry.done) break;
            run_step(lock);
        }
        if (entry.error) std::rethrow_exception(entry.error);
        return std::move(entry.logits);
    }

    // Takes the oldest waiting tokens and runs their step with the lock released.
    void run_step(std::unique_lock<std::mutex>& lock) {
        const size_t n = std::min(waiting_.size(), max_batch_);
        const std::vector<Entry*> batch(waiting_.begin(), waiting_.begin() + std::ptrdiff_t(n));
        waiting_.erase(waiting_.begin(), waiting_.begin() + std::ptrdiff_t(n));
        busy_ = true;
        ++stats_.steps, stats_.tokens += int64_t(n);
        lock.unlock();
        step(batch);
        lock.lock();
        busy_ = false;
        for (Entry* e : batch) e->done = true;
        changed_.notify_all();
    }

    static void step(const std::vector<Entry*>& batch) {
        std::vector<Session*> sessions;
        std::vector<int> tokens;
        for (const Entry* e : batch) sessions.push_back(e->session), tokens.push_back(e->token);
        try {
            const std::vector<float> logits = Session::decode_batch(sessions, tokens);
            const size_t V = logits.size() / batch.size();
            for (size_t b = 0; b < batch.size(); ++b)
                batch[b]->logits.assign(logits.begin() + std::ptrdiff_t(b * V), logits.begin() + std::ptrdiff_t((b + 1) * V));
        } catch (...) {
            if (batch.size() == 1) {
                batch[0]->error = std::current_exception();
                return;
            }
            for (Entry* e : batch) {  // each alone, so an error stays with its sequence
                try {
                    e->logits = e->session->decode(e->token);
                } catch (...) {
                    e->error = std::current_exception();
                }
            }
        }
    }

    const size_t max_batch_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;  // a token handed in, a seat left, a step or prefill ended
    std::deque<Entry*> waiting_;       // tokens handed in, oldest first
    size_t seated_ = 0;
    int prefills_waiting_ = 0;
    bool busy_ = false;  // a step or a prefill runs
    Stats stats_;
};

}  // namespace deepstack::detail
