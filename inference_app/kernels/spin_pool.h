// The worker pool shared by the CPU kernel libraries (cpu_kernels.cc, quant_kernels.cc): one
// pool per process, because both translation units are linked into one shared library and the
// pool lives in an inline function's static (a single instance across them).

#ifndef INFERENCE_APP_KERNELS_SPIN_POOL_H_
#define INFERENCE_APP_KERNELS_SPIN_POOL_H_

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace inference_app_kernels {

// A process-wide pool of worker threads that spin briefly between tasks. A decode step issues
// about 150 kernel calls some tens of microseconds apart; waking a sleeping thread for each
// (XLA's own intra-op pool, tried first) cost more than the work it took over. Workers spin
// (yielding the CPU to anything runnable) for a while after their last task, then sleep: long
// (kSpinMicros) when the next kernel call is due soon, as in a small decode step where every
// matmul is a kernel; short (kBriefSpinMicros) after a call that XLA's own multi-threaded GEMMs
// will follow, where a spinning worker would take a core from them (a 256-row step ran 15%
// slower with the long spin).
class SpinPool {
 public:
  int64_t threads() const { return workers_ + 1; }

  static SpinPool& Get() {
    static SpinPool* pool = new SpinPool(DefaultWorkers());  // lives as long as the process
    return *pool;
  }

  // Runs body(i) for i in [0, n) on the caller and the workers. The caller waits only for chunks
  // already claimed, so a worker that is slow to start never blocks it. Concurrent callers (XLA
  // may run two kernels at once) find the pool busy and run their chunks alone.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& body, int64_t spin_micros) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> submit(submit_mu_, std::try_to_lock);
    if (n == 1 || workers_ == 0 || !submit.owns_lock()) {
      for (int64_t i = 0; i < n; ++i) body(i);
      return;
    }
    auto task = std::make_shared<Task>();
    task->n = n;
    task->body = &body;
    task->spin_micros = spin_micros;
    {
      std::lock_guard<std::mutex> lock(mu_);
      task_ = task;
      epoch_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    Run(*task);
    while (task->done.load(std::memory_order_acquire) < task->claimed_done()) _mm_pause_or_yield();
  }

 private:
  struct Task {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t n = 0;
    int64_t spin_micros = 0;
    const std::function<void(int64_t)>* body = nullptr;
    int64_t claimed_done() const { return std::min(n, next.load(std::memory_order_acquire)); }
  };


  static int DefaultWorkers() {
    if (const char* env = std::getenv("INFERENCE_APP_KERNEL_THREADS")) {
      return std::max(0, std::atoi(env) - 1);
    }
    cpu_set_t set;
    int cpus = 1;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
    return std::max(0, cpus - 1);
  }

  static void _mm_pause_or_yield() { std::this_thread::yield(); }

  static void Run(Task& t) {
    for (;;) {
      const int64_t i = t.next.fetch_add(1, std::memory_order_acq_rel);
      if (i >= t.n) return;
      (*t.body)(i);
      t.done.fetch_add(1, std::memory_order_release);
    }
  }

  explicit SpinPool(int workers) : workers_(workers) {
    for (int w = 0; w < workers; ++w) std::thread([this] { Work(); }).detach();
  }

  void Work() {
    uint64_t seen = epoch_.load(std::memory_order_acquire);
    for (;;) {
      auto idle_since = std::chrono::steady_clock::now();
      int spins = 0;
      const int64_t spin = spin_;
      while (epoch_.load(std::memory_order_acquire) == seen) {
        if (++spins % 64 == 0 &&
            std::chrono::steady_clock::now() - idle_since > std::chrono::microseconds(spin)) {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
          break;
        }
        std::this_thread::yield();
      }
      std::shared_ptr<Task> task;
      {
        std::lock_guard<std::mutex> lock(mu_);
        task = task_;
        seen = epoch_.load(std::memory_order_acquire);
      }
      if (task) {
        spin_ = task->spin_micros;
        Run(*task);
      }
    }
  }

  const int workers_;
  std::atomic<int64_t> spin_{2000};  // how long idle workers spin: set by the latest task
  std::mutex submit_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> epoch_{0};
  std::shared_ptr<Task> task_;
};

constexpr int64_t kSpinMicros = 2000;
constexpr int64_t kBriefSpinMicros = 50;

inline void ParallelFor(int64_t n, const std::function<void(int64_t)>& body,
                        int64_t spin_micros = kSpinMicros) {
  SpinPool::Get().ParallelFor(n, body, spin_micros);
}

inline int64_t NumChunks(int64_t units, int64_t min_units) {
  return std::max<int64_t>(1, std::min<int64_t>(16, units / min_units));
}

}  // namespace inference_app_kernels

#endif  // INFERENCE_APP_KERNELS_SPIN_POOL_H_
