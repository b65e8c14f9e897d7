// A fixed pool of worker threads with a blocking parallel_for. The calling thread
// takes part, so a pool of n threads has n - 1 workers. After a call, workers spin for a
// short while (spin_micros()) before they block: a model's layers call one after another
// with gaps of microseconds, and a futex wake-up per layer costs 10-50 us here.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace dsq {

// A non-owning reference to a callable (no heap allocation, unlike std::function).
class TaskRef {
 public:
  template <typename F>
  TaskRef(const F& f) : obj_(&f), call_([](const void* o, size_t i) { (*static_cast<const F*>(o))(i); }) {}
  void operator()(size_t i) const { call_(obj_, i); }

 private:
  const void* obj_;
  void (*call_)(const void*, size_t);
};

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t threads() const { return workers_.size() + 1; }

  // Calls fn(task) for task in [0, tasks), spread over the threads; returns when all
  // are done. Calls from several threads at once are serialized. An exception thrown
  // by fn is rethrown here (the first one).
  void parallel_for(size_t tasks, TaskRef fn);

  // Calls fn(chunk, slot) for chunk in [0, chunks) on at most `slots` threads at once;
  // slot < slots names the caller's per-thread state (scratch). Chunks are claimed one
  // at a time, so a thread that starts late (a worker still waking) takes fewer.
  template <typename F>
  void parallel_chunks(size_t chunks, size_t slots, F&& fn) {
    slots = std::min(slots, chunks);
    if (slots <= 1 || workers_.empty()) {
      for (size_t c = 0; c < chunks; ++c) fn(c, size_t(0));
      return;
    }
    std::atomic<size_t> next{0};
    parallel_for(slots, [&](size_t slot) {
      for (size_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
           c = next.fetch_add(1, std::memory_order_relaxed))
        fn(c, slot);
    });
  }

  // How long an idle worker spins before it blocks: DSQ_POOL_SPIN_US (0 = block at once),
  // default 100 us.
  static uint64_t spin_micros();

 private:
  void worker_loop();
  void drain(const TaskRef& fn, size_t tasks);

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const TaskRef* fn_ = nullptr;
  size_t tasks_ = 0;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> active_{0};        // written under mutex_, read by the spinning caller
  std::atomic<uint64_t> generation_{0};  // written under mutex_, read by spinning workers
  bool stop_ = false;
  std::exception_ptr error_;
};

// Number of hardware threads (at least 1).
size_t hardware_threads();

}  // namespace dsq
