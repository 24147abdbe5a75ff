// tools/server/scheduler.hpp - runs chat requests on a fixed number of worker threads, each
// calling Engine::generate (the engine decodes concurrent calls together), with a bounded number
// of requests waiting for a worker. A Job carries one request's reply from its worker to the HTTP
// thread that answers it: text as it is produced, whether the prompt has been prefilled, the end.
#pragma once
#include "api_error.hpp"
#include "chat_request.hpp"
#include "stop_strings.hpp"

#include <deepstack/engine.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace deepstack::server {

struct Job {
    explicit Job(ChatRequest r) : chat(std::move(r)) {}

    const ChatRequest chat;
    std::atomic<bool> cancelled{false};  // set when the client is gone: the reply stops at its next piece

    // Guarded by mutex:
    std::mutex mutex;
    std::condition_variable changed;
    std::string pending;    // reply text produced and not yet taken by the HTTP thread
    bool started = false;   // the prompt is prefilled (or the job ended): the answer's status is known
    bool finished = false;  // the reply is complete, or `error` is set
    std::optional<ApiError> error;
    Reply reply;
    bool stop_string = false;  // the reply ended at one of chat.stop
};

class Scheduler {
public:
    // `parallel` workers; up to `max_waiting` more requests wait for one.
    Scheduler(const Engine& engine, int parallel, int max_waiting) : engine_(engine), capacity_(parallel + max_waiting) {
        for (int i = 0; i < parallel; ++i) workers_.emplace_back([this] { work(); });
    }
    ~Scheduler() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            closing_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    // Queues the job; false when every worker is busy and the queue is full.
    bool submit(std::shared_ptr<Job> job) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (admitted_ >= capacity_) return false;
            ++admitted_;
            queue_.push_back(std::move(job));
        }
        wake_.notify_one();
        return true;
    }

private:
    void work() {
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return closing_ || !queue_.empty(); });
                if (closing_) return;
                job = std::move(queue_.front());
                queue_.pop_front();
            }
            run(*job);
            std::lock_guard<std::mutex> lock(mutex_);
            --admitted_;
        }
    }

    void run(Job& job) {
        StopMatcher stop(job.chat.stop);
        auto publish = [&](const std::string& text) {
            if (text.empty()) return;
            {
                std::lock_guard<std::mutex> lock(job.mutex);
                job.pending += text;
            }
            job.changed.notify_all();
        };
        const TextCallback on_text = [&](std::string_view piece) {
            if (job.cancelled) return false;
            publish(stop.push(piece));
            return !stop.stopped();
        };
        const ProgressCallback on_progress = [&](Stage stage, const Reply&) {
            if (stage != Stage::Prefill) return;
            {
                std::lock_guard<std::mutex> lock(job.mutex);
                job.started = true;
            }
            job.changed.notify_all();
        };
        std::optional<ApiError> error;
        Reply reply;
        try {
            if (!job.cancelled) reply = engine_.generate(job.chat.request, on_text, on_progress);
            publish(stop.flush());
        } catch (const Error& e) {
            error = bad_request(e.what());
        } catch (const std::bad_alloc&) {
            error = ApiError(503, "server_error", "out of memory for this request; retry later or send smaller images", "", "out_of_memory");
        } catch (const std::exception& e) {
            error = ApiError(500, "server_error", e.what());
        }
        {
            std::lock_guard<std::mutex> lock(job.mutex);
            job.reply = std::move(reply);
            job.stop_string = stop.stopped();
            job.error = std::move(error);
            job.started = job.finished = true;
        }
        job.changed.notify_all();
    }

    const Engine& engine_;
    const int capacity_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::shared_ptr<Job>> queue_;
    int admitted_ = 0;  // running or waiting
    bool closing_ = false;
    std::vector<std::thread> workers_;
};

}  // namespace deepstack::server
