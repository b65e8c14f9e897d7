#include "base/threadpool.h"

#include <chrono>
#include <exception>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "base/env.h"

namespace dsq {

size_t hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? n : 1;
}

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

// Spins until done() or `micros` have passed; true when done() was seen. The clock is read
// every 64 rounds only.
template <typename Done>
bool spin_until(Done&& done, uint64_t micros) {
  if (micros == 0) return done();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

}  // namespace

uint64_t ThreadPool::spin_micros() {
  static const uint64_t v = env_uint64("DSQ_POOL_SPIN_US", 100);
  return v;
}

ThreadPool::ThreadPool(size_t threads) {
  if (threads < 1) threads = 1;
  for (size_t i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);  // ends a worker's spin now
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain(const TaskRef& fn, size_t tasks) {
  for (;;) {
    const size_t task = next_.fetch_add(1, std::memory_order_relaxed);
    if (task >= tasks) return;
    try {
      fn(task);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(tasks_, std::memory_order_relaxed);
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  const uint64_t spin = spin_micros();
  for (;;) {
    spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; }, spin);
    // The call's function and size are taken under the lock, together with the
    // registration in active_: a worker that wakes after its call has already returned
    // (the caller drained every task itself) sees fn_ == nullptr and does nothing. Reading
    // them later, unlocked, let a late worker pair a new call's counter with the old
    // call's (null or dangling) function: a crash found by test_c_api_stress.
    const TaskRef* fn = nullptr;
    size_t tasks = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
      if (stop_) return;
      seen = generation_.load(std::memory_order_relaxed);
      ++active_;
      fn = fn_;
      tasks = tasks_;
    }
    if (fn) drain(*fn, tasks);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--active_ == 0) done_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(size_t tasks, TaskRef fn) {
  if (tasks == 0) return;
  if (workers_.empty() || tasks == 1) {
    for (size_t i = 0; i < tasks; ++i) fn(i);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    tasks_ = tasks;
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  drain(fn, tasks);
  // The workers still on a task usually finish within microseconds: wait for them
  // spinning rather than through a futex wake-up.
  spin_until([&] { return active_.load(std::memory_order_acquire) == 0; }, spin_micros());
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return active_ == 0; });
    fn_ = nullptr;
    error = error_;
    error_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace dsq
