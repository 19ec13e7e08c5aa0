// cuda_on_cpu.h: just enough of CUDA for g++ (-std=c++20) to compile a kernel source unchanged
// and run it on the CPU, so that the tests execute the real CUDA code, not a re-written copy.
//
// Test support only: nothing in the product includes it.
//
// What it models
// * Every CUDA thread is a cooperative thread (a fiber with its own stack). The threads of one
//   block run interleaved on one OS thread; a thread runs until it reaches a synchronisation
//   point and then hands over. Blocks of a grid run one after another.
// * The 32 lanes of a warp meet at every __shfl_sync, __shfl_xor_sync and __syncwarp: no lane
//   reads a shuffled value before every lane has written its own. Shuffles take the value of the
//   source lane at that same call, so a wrong lane or offset gives the wrong number, as on a GPU.
// * The whole block meets at __syncthreads (threads that have returned count as arrived).
// * Dynamic shared memory (extern __shared__) is one array per module, filled with NaN before
//   every block, so a kernel that reads a word it never wrote sees NaN rather than last block's
//   value.
// * threadIdx, blockIdx, blockDim, gridDim (x only: the kernels here launch 1-D grids),
//   __ldg, atomicAdd (exact: one thread runs at a time), min/max, __forceinline__ and friends.
// * bfloat16 storage: this folder's cuda_bf16.h (on the include path) stands in for CUDA's, with
//   the hardware's round-to-nearest-even conversion.
// * Misuse the GPU would punish with a hang or undefined behaviour is refused with a message
//   naming the line: a full-mask shuffle or __syncwarp while a lane of the warp has returned,
//   lanes of one warp meeting at different shuffle call sites, a partial mask, a block that can
//   make no progress.
//
// What it does not model
// * The memory model: one thread runs at a time, so there are no data races, no torn or stale
//   reads and no need for fences; a kernel that races on a GPU may pass here.
// * Occupancy, register or shared-memory limits (beyond the launch's declared size), the
//   48 KiB opt-in rule (the Python launcher checks that), warp scheduling order, timing or speed.
// * Out-of-bounds global memory accesses (they touch host memory, unchecked), memory spaces
//   (__ldg is a plain load), texture/surface memory, streams and events, 2-D/3-D launches,
//   cooperative groups, partial-mask shuffles and floating-point differences of the GPU's
//   instructions (fused multiply-add contraction follows g++, not nvcc).

#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

struct __nv_bfloat16;  // defined by this folder's cuda_bf16.h, which a kernel source includes as on a GPU

#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

namespace cuda_cpu {

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

constexpr int kWarp = 32;
constexpr size_t kStack = 64 * 1024;

struct Thread;

// One warp's meeting point: lanes write their shuffle values into one of two slot arrays
// (alternating by generation, so a fast lane's next shuffle cannot overwrite a value a slow
// lane has yet to read), arrive, and wait for the generation to move on.
struct Warp {
    int lanes = 0;          // threads of the block in this warp
    int returned = 0;       // lanes that have returned from the kernel
    int arrived = 0;
    unsigned generation = 0;
    const char* site = nullptr;  // the call arriving lanes must share this generation
    unsigned site_line = 0;
    uint64_t slots[2][kWarp] = {};
};

struct Thread {
#if defined(__x86_64__)
    void* sp = nullptr;  // saved stack pointer while switched out
#else
    ucontext_t context;
#endif
    std::vector<char> stack;
    dim3 idx;
    bool done = false;
};

struct Launch {
    unsigned grid = 1, block = 1;
    size_t shared_bytes = 0;
};

struct State {
#if defined(__x86_64__)
    void* scheduler_sp = nullptr;
#else
    ucontext_t scheduler;
#endif
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    Thread* current = nullptr;
    dim3 block_idx, block_dim, grid_dim;
    int live = 0;               // threads of the block not yet returned
    int block_arrived = 0;
    unsigned block_generation = 0;
    std::string error;          // set by the first misuse; the launch stops and reports it
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

inline State& state() {
    static State s;
    return s;
}

inline void thread_main();

// Switching between threads. On x86-64 a few instructions save the callee-saved registers and
// swap stacks (ucontext's swapcontext makes a system call per switch, and a kernel meets its
// warp millions of times in a test); elsewhere ucontext. The floating-point control words
// (MXCSR, x87) are not switched: every thread runs on the launching OS thread, no kernel changes
// its rounding or exception masks, and saving them cost every switch a serialising fldcw.
#if defined(__x86_64__)
extern "C" void cuda_cpu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl cuda_cpu_switch
    .hidden cuda_cpu_switch
    .type cuda_cpu_switch, @function
cuda_cpu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_cpu_switch, .-cuda_cpu_switch
)");

inline void yield() {
    State& s = state();
    cuda_cpu_switch(&s.current->sp, s.scheduler_sp);
}

[[noreturn]] inline void thread_entry() {
    thread_main();
    yield();  // marked done: never resumed
    __builtin_unreachable();
}

inline void prepare(Thread& th) {
    auto top = reinterpret_cast<uintptr_t>(th.stack.data() + th.stack.size()) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                              // thread_entry's return address: none
    *--sp = reinterpret_cast<uint64_t>(&thread_entry);      // where the first switch "returns" to
    for (int k = 0; k < 6; ++k) *--sp = 0;                  // rbp, rbx, r12-r15
    th.sp = sp;
}

inline void resume(Thread& th) {
    State& s = state();
    cuda_cpu_switch(&s.scheduler_sp, th.sp);
}
#else
inline void yield() {
    State& s = state();
    swapcontext(&s.current->context, &s.scheduler);
}

inline void prepare(Thread& th) {
    getcontext(&th.context);
    th.context.uc_stack.ss_sp = th.stack.data();
    th.context.uc_stack.ss_size = th.stack.size();
    th.context.uc_link = &state().scheduler;
    makecontext(&th.context, thread_main, 0);
}

inline void resume(Thread& th) {
    swapcontext(&state().scheduler, &th.context);
}
#endif

[[noreturn]] inline void fail(const std::string& message) {
    State& s = state();
    if (s.error.empty()) s.error = message;
    for (;;) yield();  // never resumed: the scheduler stops the launch
}

inline std::string where(const std::source_location& at) {
    return std::string(at.file_name()) + ":" + std::to_string(at.line());
}

// Whether a lane arriving at (site, line) meets the lanes already waiting at (waiting, waiting_line):
// the same call, or __syncwarp anywhere. The names are string literals, so the same call nearly
// always has the same pointer and line, settled without comparing characters (a lane meets its
// warp millions of times in a fit).
inline bool same_site(const char* waiting, unsigned waiting_line, const char* site, unsigned line) {
    if (waiting == site && waiting_line == line) return true;
    if (std::strcmp(waiting, site) != 0) return false;
    return waiting_line == line || std::strcmp(site, "__syncwarp") == 0;
}

// The warp barrier every shuffle and __syncwarp goes through. Returns the generation passed.
inline unsigned warp_meet(unsigned mask, const char* site, const std::source_location& at) {
    State& s = state();
    const unsigned lane = s.current->idx.x % kWarp;
    Warp& w = s.warps[s.current->idx.x / kWarp];
    if (mask != 0xffffffffu)
        fail(where(at) + ": " + site + " with mask " + std::to_string(mask) +
             ": only full-warp masks are modelled");
    if (w.lanes != kWarp)
        fail(where(at) + ": " + site + " with a full mask in a warp of " + std::to_string(w.lanes) +
             " threads (the block size is not a multiple of 32)");
    if (w.returned > 0)
        fail(where(at) + ": " + site + " by lane " + std::to_string(lane) + " with a full mask, but " +
             std::to_string(w.returned) + " lanes of the warp have returned");
    const unsigned generation = w.generation;
    if (w.arrived == 0) {
        w.site = site;
        w.site_line = at.line();
    } else if (!same_site(w.site, w.site_line, site, at.line())) {
        fail(where(at) + ": lane " + std::to_string(lane) + " reached " + site + " while other lanes of its warp wait at " +
             w.site + " on line " + std::to_string(w.site_line) + " (divergent warp synchronisation)");
    }
    if (++w.arrived == kWarp) {
        w.arrived = 0;
        ++w.generation;
    } else {
        while (w.generation == generation) yield();
    }
    return generation;
}

template <class T>
inline uint64_t to_bits(T value) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <class T>
inline T from_bits(uint64_t bits) {
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

template <class T>
inline T shuffle(unsigned mask, T value, int source_lane, const char* site, const std::source_location& at) {
    State& s = state();
    Warp& w = s.warps[s.current->idx.x / kWarp];
    const unsigned lane = s.current->idx.x % kWarp;
    // written before meeting, read after: every lane's value of this call is in place
    w.slots[w.generation & 1][lane] = to_bits(value);
    const unsigned generation = warp_meet(mask, site, at);
    return from_bits<T>(w.slots[generation & 1][source_lane & (kWarp - 1)]);
}

inline void syncthreads(const std::source_location& at) {
    State& s = state();
    (void)at;
    const unsigned generation = s.block_generation;
    if (++s.block_arrived == s.live) {
        s.block_arrived = 0;
        ++s.block_generation;
    } else {
        while (s.block_generation == generation) yield();
    }
}

inline void thread_main() {  // every thread: the kernel, then the bookkeeping of its return
    State& s = state();
    s.body(s.body_arg);
    s.current->done = true;
    --s.live;
    Warp& w = s.warps[s.current->idx.x / kWarp];
    ++w.returned;
    if (w.arrived > 0)
        fail("thread " + std::to_string(s.current->idx.x) + " returned while " + std::to_string(w.arrived) +
             " lanes of its warp wait at " + w.site + " on line " + std::to_string(w.site_line));
    if (s.block_arrived > 0 && s.block_arrived == s.live) {  // returned threads count as arrived
        s.block_arrived = 0;
        ++s.block_generation;
    }
}

// Runs body(arg) as every thread of every block of the launch. Returns the first misuse, or "".
inline std::string run(const Launch& launch, void* shared, size_t shared_capacity, void (*body)(void*), void* arg) {
    State& s = state();
    s.error.clear();
    if (launch.block < 1 || launch.block > 1024) return "block of " + std::to_string(launch.block) + " threads (1 to 1024)";
    if (launch.grid < 1) return "empty grid";
    if (launch.shared_bytes > shared_capacity)
        return "launch asks for " + std::to_string(launch.shared_bytes) + " bytes of dynamic shared memory; the " +
               "emulated module holds " + std::to_string(shared_capacity);
    s.body = body;
    s.body_arg = arg;
    s.grid_dim = dim3{launch.grid, 1, 1};
    s.block_dim = dim3{launch.block, 1, 1};
    s.threads.resize(launch.block);
    for (auto& t : s.threads)
        if (t.stack.size() != kStack) t.stack.assign(kStack, 0);
    const unsigned warps = (launch.block + kWarp - 1) / kWarp;
    for (unsigned b = 0; b < launch.grid && s.error.empty(); ++b) {
        s.block_idx = dim3{b, 1, 1};
        if (shared != nullptr) {
            float* words = static_cast<float*>(shared);
            for (size_t k = 0; k < shared_capacity / sizeof(float); ++k) words[k] = NAN;
        }
        s.warps.assign(warps, Warp{});
        for (unsigned w = 0; w < warps; ++w)
            s.warps[w].lanes = static_cast<int>(std::min<unsigned>(kWarp, launch.block - w * kWarp));
        s.live = static_cast<int>(launch.block);
        s.block_arrived = 0;
        for (unsigned t = 0; t < launch.block; ++t) {
            Thread& th = s.threads[t];
            th.idx = dim3{t, 1, 1};
            th.done = false;
            prepare(th);
        }
        // round robin until every thread has returned; a pass in which nobody can move is a hang
        while (s.live > 0 && s.error.empty()) {
            for (auto& th : s.threads) {
                if (th.done) continue;
                s.current = &th;
                resume(th);
                if (!s.error.empty()) break;
            }
        }
    }
    s.current = nullptr;
    return s.error;
}

// The kernel's parameter types as a string the Python launcher checks arguments against:
// i int, q long long, Q unsigned long long, f float, d double, b __nv_bfloat16 (as uint16 bits);
// a leading * for a pointer.
template <class T>
inline std::string type_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) return "*" + type_code<std::remove_pointer_t<U>>();
    else if constexpr (std::is_same_v<U, __nv_bfloat16>) return "b";
    else if constexpr (std::is_same_v<U, int>) return "i";
    else if constexpr (std::is_same_v<U, long long>) return "q";
    else if constexpr (std::is_same_v<U, unsigned long long>) return "Q";
    else if constexpr (std::is_same_v<U, float>) return "f";
    else if constexpr (std::is_same_v<U, double>) return "d";
    else static_assert(!sizeof(U), "a kernel parameter type the launcher does not know");
}

template <class... A>
inline std::string signature(void (*)(A...)) {
    std::string out;
    ((out += type_code<A>() + ","), ...);
    if (!out.empty()) out.pop_back();
    return out;
}

// cuLaunchKernel's convention: args[i] points at the value of parameter i.
template <class... A, size_t... I>
inline void call_unpacked(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <class... A>
inline std::string launch(void (*kernel)(A...), const Launch& launch, void* shared, size_t capacity, void** args) {
    struct Call {
        void (*kernel)(A...);
        void** args;
    } call{kernel, args};
    auto body = [](void* p) {
        auto* c = static_cast<Call*>(p);
        call_unpacked(c->kernel, c->args, std::index_sequence_for<A...>{});
    };
    return run(launch, shared, capacity, body, &call);
}

}  // namespace cuda_cpu

using cuda_cpu::dim3;

#define threadIdx (::cuda_cpu::state().current->idx)
#define blockIdx (::cuda_cpu::state().block_idx)
#define blockDim (::cuda_cpu::state().block_dim)
#define gridDim (::cuda_cpu::state().grid_dim)
#define warpSize 32

template <class T>
inline T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32,
                     std::source_location at = std::source_location::current()) {
    if (width != 32) cuda_cpu::fail(cuda_cpu::where(at) + ": __shfl_sync with width != 32 is not modelled");
    return cuda_cpu::shuffle(mask, value, source_lane, "__shfl_sync", at);
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32,
                         std::source_location at = std::source_location::current()) {
    if (width != 32) cuda_cpu::fail(cuda_cpu::where(at) + ": __shfl_xor_sync with width != 32 is not modelled");
    const int lane = static_cast<int>(cuda_cpu::state().current->idx.x % cuda_cpu::kWarp);
    return cuda_cpu::shuffle(mask, value, lane ^ lane_mask, "__shfl_xor_sync", at);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location at = std::source_location::current()) {
    cuda_cpu::warp_meet(mask, "__syncwarp", at);
}

inline void __syncthreads(std::source_location at = std::source_location::current()) { cuda_cpu::syncthreads(at); }

template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// One thread runs at a time, so a plain read-modify-write is atomic here.
template <class T>
inline T atomicAdd(T* address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}

template <class T>
inline T min(T a, T b) {
    return b < a ? b : a;
}

template <class T>
inline T max(T a, T b) {
    return a < b ? b : a;
}


