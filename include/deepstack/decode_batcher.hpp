// deepstack/decode_batcher.hpp - decode steps shared by concurrent replies: the threads of an
// Engine's generate() calls hand in their next token, and one decoder pass
// (Session::decode_batch) runs the tokens of all of them, reading the weights once per step.
#pragma once
#include "model.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <omp.h>

namespace deepstack::detail {

// The batcher runs the engine's work on a thread of its own: the model's load, every prefill
// (exclusive()) and every decode step, so all of it shares one OpenMP team whose threads spin
// between parallel regions (teams of several threads taking turns would each sleep and be woken
// at every region, and a decode step runs hundreds of regions).
// A reply takes a Seat once its prompt is prefilled and leaves it when it ends (done, stopped by
// its callback, or failed). At each decode step its thread hands in (session, token) and waits.
// Once every seated sequence has handed in its token (or left), the worker runs the step for all
// of them (at most max_batch, the oldest first) and gives each its logits: so concurrent replies
// batch without a timer, and a lone reply steps at once. A prefill asking to run goes before the
// next step, so a new reply joins between two steps. One sequence's error (its context is full,
// say) is that sequence's alone: a failed step runs again one sequence at a time. Sampling and the
// text callbacks run in each reply's own thread between steps, so a callback that blocks holds up
// the step of every seated reply. Code that the worker runs (a stage callback of a prefill) or a
// seated thread runs (a text callback) and that calls generate() again bypasses the batcher.
class DecodeBatcher {
public:
    // threads: the OpenMP threads of the worker's parallel regions (0: the calling thread's setting).
    explicit DecodeBatcher(int max_batch, int threads = 0)
        : max_batch_(size_t(std::max(1, max_batch))), threads_(threads > 0 ? threads : omp_get_max_threads()) {
        worker_ = std::thread([this] { work(); });
    }
    ~DecodeBatcher() {
        {
            std::lock_guard<std::mutex> guard(mutex_);
            stopping_ = true;
        }
        changed_.notify_all();
        worker_.join();
    }
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

    // Whether the calling thread is the worker of a batcher or seated in one.
    static bool inside() { return depth() > 0; }

    // Runs fn() - a prefill - on the worker while no step runs; returns its result (or throws its
    // exception) in the calling thread.
    template <typename Fn>
    auto exclusive(Fn&& fn) -> decltype(fn()) {
        std::optional<decltype(fn())> result;
        std::exception_ptr error;
        Job job;
        job.run = [&] {
            try {
                result.emplace(fn());
            } catch (...) {
                error = std::current_exception();
            }
        };
        std::unique_lock<std::mutex> lock(mutex_);
        jobs_.push_back(&job);
        changed_.notify_all();
        changed_.wait(lock, [&] { return job.done; });
        lock.unlock();
        if (error) std::rethrow_exception(error);
        return std::move(*result);
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
    // A prefill handed in, on its thread's stack until the worker has run it.
    struct Job {
        std::function<void()> run;
        bool done = false;
    };

    static int& depth() {
        static thread_local int d = 0;
        return d;
    }

    bool step_ready() const { return !waiting_.empty() && waiting_.size() >= std::min(seated_, max_batch_); }

    std::vector<float> decode(Session& session, int token) {
        Entry entry;
        entry.session = &session, entry.token = token;
        std::unique_lock<std::mutex> lock(mutex_);
        waiting_.push_back(&entry);
        changed_.notify_all();
        changed_.wait(lock, [&] { return entry.done; });
        if (entry.error) std::rethrow_exception(entry.error);
        return std::move(entry.logits);
    }

    // The worker: prefills first, then a step once every seated sequence has handed in its token.
    void work() {
        ++depth();
        omp_set_num_threads(threads_);
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            changed_.wait(lock, [&] { return stopping_ || !jobs_.empty() || step_ready(); });
            if (!jobs_.empty()) {
                Job* job = jobs_.front();
                jobs_.pop_front();
                lock.unlock();
                job->run();
                lock.lock();
                job->done = true;
                changed_.notify_all();
            } else if (step_ready()) {
                run_step(lock);
            } else {
                return;  // stopping, nothing left to run
            }
        }
    }

    // Takes the oldest waiting tokens and runs their step with the lock released.
    void run_step(std::unique_lock<std::mutex>& lock) {
        const size_t n = std::min(waiting_.size(), max_batch_);
        const std::vector<Entry*> batch(waiting_.begin(), waiting_.begin() + std::ptrdiff_t(n));
        waiting_.erase(waiting_.begin(), waiting_.begin() + std::ptrdiff_t(n));
        ++stats_.steps, stats_.tokens += int64_t(n);
        lock.unlock();
        step(batch);
        lock.lock();
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
    const int threads_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;  // a token or prefill handed in, a seat left, a step or prefill ended
    std::deque<Entry*> waiting_;       // tokens handed in, oldest first
    std::deque<Job*> jobs_;            // prefills handed in, oldest first
    size_t seated_ = 0;
    bool stopping_ = false;
    Stats stats_;
    std::thread worker_;  // last: started once the members above exist
};

}  // namespace deepstack::detail
