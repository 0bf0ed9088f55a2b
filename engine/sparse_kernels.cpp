// CPU kernels for sparse_dqn.py's sparse layer and its Q head, the optimiser, the games and the
// replay, loaded with torch.utils.cpp_extension. The pure-torch path in sparse_dqn.py computes
// the same functions (up to float rounding) and is what the GPU and machines without a compiler
// use.
//
// The layer reads its mask by input: for input i of agent n, the entries e of the (units x k)
// weight matrix that look at i (flat[e]) and their units (unit[e]). MinAtar's observations are
// binary and mostly zeros, so visiting only the inputs that are on somewhere in the batch skips
// most of the work of gathering every unit's k inputs.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <optional>
#include <unordered_map>
#include <vector>
#include <cmath>
#include <cstring>
#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace {

// Flush denormal floats to zero in this thread while a kernel runs. Squared gradients that decay
// towards zero pass through the denormal range, where x86 arithmetic is ~20x slower; flushing
// them changes no result by more than a denormal.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // flush-to-zero and denormals-are-zero
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// The masks read by input, one set per agent or, where the masks of all agents are alike (spatial
// masks are the same for every seed), one set for all: the population then reads one copy, which
// stays in cache, instead of one per agent.
struct Inverse {
  const int32_t* ptr;   // (N or 1, D + 1): entries of input i are ptr[i] .. ptr[i + 1]
  const int32_t* flat;  // (N or 1, U * K): index into the agent's weight matrix (its unit: UnitOf)
  int64_t each;         // 1 with a set per agent, 0 with one for all
  Inverse(const torch::Tensor& p, const torch::Tensor& f)
      : ptr(p.data_ptr<int32_t>()), flat(f.data_ptr<int32_t>()), each(p.size(0) > 1) {}
  const int32_t* ptr_of(int64_t n, int64_t D) const { return ptr + n * each * (D + 1); }
  const int32_t* flat_of(int64_t n, int64_t E) const { return flat + n * each * E; }
};

// The unit of entry f of a (units x k) weight matrix, f / k, by a multiply and a shift: exact for
// f * k < 2^40 (a rounded-up reciprocal's error stays under 1 / k), where a division takes ~10x as
// long and reading a table of units (one int per weight) costs a stream through memory as large.
struct UnitOf {
  uint64_t magic;
  UnitOf(int64_t entries, int64_t units) : magic(((uint64_t(1) << 40) + k(entries, units) - 1) / k(entries, units)) {
    TORCH_CHECK(entries * k(entries, units) < (int64_t(1) << 40), "sparse layer too large: ", entries, " weights");
  }
  int64_t operator()(int32_t f) const { return int64_t((uint64_t(uint32_t(f)) * magic) >> 40); }
  static int64_t k(int64_t entries, int64_t units) {
    return std::max<int64_t>(1, entries / std::max<int64_t>(1, units));
  }
};

// Asks for the cache lines of [start, start + bytes) ahead of their use.
static void prefetch_range(const void* start, int64_t bytes) {
#if defined(__SSE__)
  const char* p = static_cast<const char*>(start);
  for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch(p + at, _MM_HINT_T0);
#endif
}

}  // namespace

// Rows of the batch side by side: xt (N, D, B) is the input transposed, out (N, U, B). An input
// that is zero in every sample of the batch costs one scan; one that is on anywhere adds its
// weight times its (B,) column to each unit that reads it, a loop that the compiler vectorises.
// The samples where an input column is on, if they are few: up to kFew of them are listed in
// `at` and their count returned; more return kMany (take the vector loop over the whole column).
constexpr int kFew = 4, kMany = kFew + 1;
static int few_nonzero(const float* column, int64_t B, int32_t* at) {
  int64_t on = 0;  // a branch-free count first: most columns are zero in every sample
  for (int64_t b = 0; b < B; ++b) on += column[b] != 0.f;
  if (on == 0) return 0;
  if (on > kFew) return kMany;
  int count = 0;
  for (int64_t b = 0; b < B; ++b)
    if (column[b] != 0.f) at[count++] = int32_t(b);
  return count;
}

// Work items: agents, each cut into `parts` pieces when there are fewer agents than threads, so
// that a population of one still uses every core.
static int64_t parts_per_agent(int64_t N) {
  const int64_t threads = at::get_num_threads();
  return N >= threads ? 1 : (threads + N - 1) / N;
}

// Sums for kBlock units at a time, held in registers as kVecs vectors of kLanes floats (GCC's
// vector extension, lowered to the widest vectors the target has).
constexpr int kLanes = 16, kVecs = 4;
constexpr int64_t kBlock = kLanes * kVecs;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

// A batch of kByUnit samples (the DQN's batch) may be summed unit by unit instead: each unit adds
// its inputs' (B,) columns in ascending input order (by_input, with their weights at by_flat: each
// unit's mask sorted by input), every lane at once, in registers. That is the order in which the
// loop over inputs adds them; the inputs that loop skips (off in every sample, or in this lane)
// add only zeros here, which change no sum but for the sign of a zero, and the ReLU makes every
// zero +0: the same bits either way, so the choice is only one of speed (by_unit_is_cheaper).
constexpr int64_t kByUnit = 32;

// Units come in groups that read the same inputs: spatial masks give every location's 3 x 3 patch
// to 12 units (random and predictive masks give each neighbourhood to the 2 to 4 units of its
// centre, too few to gain: sparse_dqn._by_unit leaves those one unit a group). The units are
// visited group by group (members, group g's first at group_start[g]), and by_input and
// by_flat hold their rows in that order, so that they stream through memory. Up to kChunk units
// of a group are summed together: each input column is loaded once for all of them, and their
// 2 * kChunk independent sums keep the multiply-adders busy.
constexpr int kChunk = 6;
// Units alone in their group (random and predictive masks) summed together (forward_singles), and
// how many of them ahead their tables and weights are asked for.
constexpr int kSingles = 4, kSinglesAhead = 2 * kSingles;

// The weights of unit m's e-th input are w[flat[m * K + e]] in the agent's own (units * k) layout,
// or, from grouped weights (flat null), w[e * size + m]: the group's weights input by input, its
// `size` members side by side, so that the few inputs on in a batch read a few short runs.
template <int64_t kB, int kM>  // the batch, whole vectors of kLanes; the units summed together
static void forward_chunk(const float* __restrict__ x, const float* __restrict__ w, const float* bias,
                          const int32_t* inputs, const int32_t* flat, int64_t size, const int32_t* units,
                          int64_t K, const uint64_t* live, float* __restrict__ out) {
  constexpr int64_t kV = kB / kLanes;
  Vec acc[kM][kV];
  for (int m = 0; m < kM; ++m)
    for (int64_t v = 0; v < kV; ++v) acc[m][v] = Vec{} + bias[units[m]];
  for (int64_t word = 0; word * 64 < K; ++word)
    for (uint64_t bits = live[word]; bits; bits &= bits - 1) {
      const int64_t e = word * 64 + __builtin_ctzll(bits);
      const float* column = x + int64_t(inputs[e]) * kB;
      Vec c[kV];
      for (int64_t v = 0; v < kV; ++v) std::memcpy(&c[v], column + v * kLanes, sizeof c[v]);
      for (int m = 0; m < kM; ++m) {
        const float we = flat ? w[flat[m * K + e]] : w[e * size + m];
        for (int64_t v = 0; v < kV; ++v) acc[m][v] += we * c[v];
      }
    }
  for (int m = 0; m < kM; ++m)
    for (int64_t v = 0; v < kV; ++v) {
      const Vec r = acc[m][v] > 0.f ? acc[m][v] : Vec{};
      std::memcpy(out + int64_t(units[m]) * kB + v * kLanes, &r, sizeof r);
    }
}

// Units alone in their group (random and predictive masks), kM at a time, each over its own inputs,
// all K of them: kM chains of dependent multiply-adds side by side, without the bookkeeping that
// skipping inputs would take. Inputs off in every sample add zeros, which change no sum (see
// kByUnit); predictive units crowd onto the inputs that are on, so few are off (17% of Space
// Invaders' entries in a batch of 32), and forward_by_unit skips them where more than half are.
template <int64_t kB, int kM>
static void forward_singles(const float* __restrict__ x, const float* __restrict__ w, const float* bias,
                            const int32_t* inputs, const int32_t* flat, const int32_t* units, int64_t K,
                            float* __restrict__ out) {
  constexpr int64_t kV = kB / kLanes;
  Vec acc[kM][kV];
  for (int m = 0; m < kM; ++m)
    for (int64_t v = 0; v < kV; ++v) acc[m][v] = Vec{} + bias[units[m]];
  for (int64_t e = 0; e < K; ++e)
    for (int m = 0; m < kM; ++m) {
      const float* column = x + int64_t(inputs[m * K + e]) * kB;
      const float we = flat ? w[flat[m * K + e]] : w[m * K + e];
      for (int64_t v = 0; v < kV; ++v) {
        Vec c;
        std::memcpy(&c, column + v * kLanes, sizeof c);
        acc[m][v] += we * c;
      }
    }
  for (int m = 0; m < kM; ++m)
    for (int64_t v = 0; v < kV; ++v) {
      const Vec r = acc[m][v] > 0.f ? acc[m][v] : Vec{};
      std::memcpy(out + int64_t(units[m]) * kB + v * kLanes, &r, sizeof r);
    }
}

// Which inputs of one agent's batch x (D, kB) are on in some sample: nonzero[i] 1 or 0.
template <int64_t kB>
static void nonzero_columns(const float* x, int64_t D, uint8_t* nonzero) {
  for (int64_t i = 0; i < D; ++i) {
#if defined(__AVX512F__)
    __mmask16 on = 0;
    for (int64_t v = 0; v < kB / 16; ++v)
      on |= _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i * kB + v * 16), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    nonzero[i] = on != 0;
#else
    bool on = false;
    for (int64_t b = 0; b < kB; ++b) on |= x[i * kB + b] != 0.f;
    nonzero[i] = on;
#endif
  }
}

// The bits of a group's live inputs (its input e on in some sample: bit e).
static void live_inputs(const uint8_t* nonzero, const int32_t* group_inputs, int64_t K, uint64_t* live) {
  for (int64_t word = 0; word * 64 < K; ++word) {
    uint64_t bits = 0;
    for (int64_t e = word * 64; e < std::min<int64_t>(K, word * 64 + 64); ++e)
      bits |= uint64_t(nonzero[group_inputs[e]]) << (e - word * 64);
    live[word] = bits;
  }
}

// A group's inputs that are off in every sample are skipped (MinAtar's batches leave 75 to 80% of
// a spatial group's input columns zero): adding their zero products changes no sum. gw: the
// grouped weights (forward_chunk), or null. Units alone in their group are summed whole, kSingles
// at a time, where most entries are live; their tables and weights are asked for kSinglesAhead
// units ahead: with 64 predictive agents, whose tables and weights do not stay in cache, that took
// the forward from 5.5 to 3.8 ms, one thread (benchmarks/README.md).
template <int64_t kB>
static void forward_by_unit(const float* x, const float* w, const float* gw, const float* bias, const int32_t* ptr,
                            const int32_t* by_input, const int32_t* by_flat, const int32_t* members,
                            const int32_t* group_start, int64_t g0, int64_t g1, int64_t D, int64_t K, float* out) {
  std::vector<uint8_t> nonzero(D);
  std::vector<uint64_t> live((K + 63) / 64);
  nonzero_columns<kB>(x, D, nonzero.data());
  int whole = -1;  // whether to sum units alone whole: decided where the first is met (grouped masks have none)
  auto sum_whole = [&] {
    if (whole < 0) {
      int64_t live_entries = 0;
      for (int64_t i = 0; i < D; ++i) live_entries += nonzero[i] ? ptr[i + 1] - ptr[i] : 0;
      whole = 2 * live_entries > ptr[D];  // skipping the rest would save less than it costs
    }
    return whole == 1;
  };
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t first = group_start[g], size = group_start[g + 1] - first;
    if (size == 1 && g + kSingles <= g1 && group_start[g + kSingles] == first + kSingles && sum_whole()) {
      if (group_start[std::min(g1, g + kSingles + kSinglesAhead)] - first == kSingles + kSinglesAhead) {
        const int64_t next = (first + kSinglesAhead) * K, bytes = kSingles * K * sizeof(float);
        prefetch_range(by_input + next, bytes);
        prefetch_range(gw ? static_cast<const void*>(gw + next) : by_flat + next, bytes);
        if (!gw) prefetch_range(w + int64_t(members[first + kSinglesAhead]) * K, bytes);
      }
      forward_singles<kB, kSingles>(x, gw ? gw + first * K : w, bias, by_input + first * K,
                                    gw ? nullptr : by_flat + first * K, members + first, K, out);
      g += kSingles - 1;
      continue;
    }
    live_inputs(nonzero.data(), by_input + first * K, K, live.data());  // alike for every member
    for (int64_t i = first; i < first + size; i += kChunk) {
      const int32_t *inputs = by_input + i * K, *flat = gw ? nullptr : by_flat + i * K, *units = members + i;
      const float* wi = gw ? gw + first * K + (i - first) : w;
      switch (std::min<int64_t>(kChunk, first + size - i)) {
        case 6: forward_chunk<kB, 6>(x, wi, bias, inputs, flat, size, units, K, live.data(), out); break;
        case 5: forward_chunk<kB, 5>(x, wi, bias, inputs, flat, size, units, K, live.data(), out); break;
        case 4: forward_chunk<kB, 4>(x, wi, bias, inputs, flat, size, units, K, live.data(), out); break;
        case 3: forward_chunk<kB, 3>(x, wi, bias, inputs, flat, size, units, K, live.data(), out); break;
        case 2: forward_chunk<kB, 2>(x, wi, bias, inputs, flat, size, units, K, live.data(), out); break;
        default: forward_chunk<kB, 1>(x, wi, bias, inputs, flat, size, units, K, live.data(), out);
      }
    }
  }
}

// One sample (acting) from grouped weights: each group adds its inputs that are on, in ascending
// input order as the loop over inputs would, all members at once, from short runs of weights.
static void forward_one_grouped(const float* x, const float* gw, const float* bias, const int32_t* by_input,
                                const int32_t* members, const int32_t* group_start, int64_t groups, int64_t K,
                                float* out) {
  std::vector<float> acc;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = group_start[g], size = group_start[g + 1] - first;
    const int32_t* inputs = by_input + first * K;
    const float* w = gw + first * K;
    acc.resize(size);
    for (int64_t m = 0; m < size; ++m) acc[m] = bias[members[first + m]];
    for (int64_t e = 0; e < K; ++e) {
      const float xe = x[inputs[e]];
      if (xe == 0.f) continue;
      for (int64_t m = 0; m < size; ++m) acc[m] += w[e * size + m] * xe;
    }
    for (int64_t m = 0; m < size; ++m) out[members[first + m]] = acc[m] > 0.f ? acc[m] : 0.f;
  }
}

// From this many agents on, their tables and rows no longer stay in cache, and reading them input
// by input, a row here and a row there, costs two to four times as much per agent: by unit, 1.1
// to 1.3 times (benchmarks/forward_paths.json).
constexpr int64_t kCrowd = 16;

static int64_t on_count(const float* column, int64_t B) {
#if defined(__AVX512F__)
  if (B == kByUnit) {
    const __mmask16 lo = _mm512_cmp_ps_mask(_mm512_loadu_ps(column), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    const __mmask16 hi = _mm512_cmp_ps_mask(_mm512_loadu_ps(column + 16), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    return __builtin_popcount(lo) + __builtin_popcount(hi);
  }
#endif
  int64_t on = 0;
  for (int64_t b = 0; b < B; ++b) on += column[b] != 0.f;
  return on;
}

// Whether summing unit by unit is the cheaper way for one agent's batch (x (D, B)), for units not
// grouped. (Grouped, as spatial masks' are, by unit is cheaper on MinAtar's observations at any
// population size, and deciding costs a pass over x: benchmarks/forward_paths.py.) By input, an
// input off in every sample costs nothing, one on in a few samples a few scalar adds per entry, and
// one on in more about six passes over the lanes per entry: each reads and writes its unit's row.
// By unit, an entry whose input is off in every sample costs its test, any other about three passes
// (its weight read from the unit's row, the column, the sums). The weights were fitted so that, in
// every case of benchmarks/forward_paths.json (random and predictive masks, 1 to 64 agents), the
// choice costs at most 2 us per agent more than the faster way.
static bool by_unit_is_cheaper(const float* x, const int32_t* ptr, int64_t D, int64_t B, int64_t N) {
  int64_t by_input = 0, by_unit = 0;  // in eighths of a pass over the lanes
  for (int64_t i = 0; i < D; ++i) {
    const int64_t on = on_count(x + i * B, B), entries = ptr[i + 1] - ptr[i];
    by_input += entries * (on == 0 ? 0 : on <= kFew ? 2 * on : 48);
    by_unit += entries * (on == 0 ? 3 : 24);
  }
  return by_input * (N >= kCrowd ? 3 : 1) > by_unit;
}

// The Q head on the sparse layer's units-major output: h (N, U, B), weight (N, A, U), bias (N, A)
// -> q (N, B, A). Training computes it as torch.baddbmm(bias, h.transpose(1, 2), weight.T), which
// MKL runs at a few GFLOP/s in that layout; these sums are added in MKL's order for it, so they
// give its bits (tests/test_network.py): each product rounded on its own, no fused multiply-add,
// added in unit order from zero, the bias last. Whole vectors of the batch at a time, every action
// in registers: 12x MKL's speed for 64 agents at a batch of 32 (benchmarks/head_layout.py).
// GCC's default -ffp-contract=fast would fuse the multiply and the add, and the function-level
// switch below does not reach into a lambda, so the sums live in a function of their own.
constexpr int64_t kMaxActions = 8;
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
static void head_forward_agent(const float* __restrict__ h, const float* __restrict__ w, const float* bias,
                               int64_t U, int64_t B, int64_t A, float* __restrict__ q) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  int64_t b0 = 0;
  for (; b0 + kLanes <= B; b0 += kLanes) {
    Vec acc[kMaxActions] = {};
    for (int64_t u = 0; u < U; ++u) {
      Vec x;
      std::memcpy(&x, h + u * B + b0, sizeof x);
      for (int64_t a = 0; a < A; ++a) {
        const Vec product = x * w[a * U + u];
        acc[a] = acc[a] + product;
      }
    }
    for (int64_t l = 0; l < kLanes; ++l)
      for (int64_t a = 0; a < A; ++a) q[(b0 + l) * A + a] = acc[a][l] + bias[a];
  }
  for (; b0 < B; ++b0)
    for (int64_t a = 0; a < A; ++a) {
      float acc = 0.f;
      for (int64_t u = 0; u < U; ++u) {
        const float product = h[u * B + b0] * w[a * U + u];
        acc = acc + product;
      }
      q[b0 * A + a] = acc + bias[a];
    }
}
#pragma GCC pop_options

// Acting (one sample) visits the inputs that are on, adding each one's weights to its units. The
// weights lie scattered over the agent's row, in an order the hardware's prefetching cannot
// follow, and where each agent has its own tables those do not stay in cache either: the weights
// of the on-input kActAhead ahead are asked for, and the table entries that locate them one more
// kActAhead ahead. For 64 Space Invaders predictive agents, one thread, it beat fetching the
// agent's whole row into L2 first by 1.77x, and the loop over every input before it by 1.22x.
constexpr size_t kActAhead = 2;

// One agent's lanes b0..b1 of the batch, input by input: out (U, B) starts at the bias, an input
// off in every sample of them costs one scan, one on in a few samples a few scalar adds per entry,
// one on in more a vector loop over the lanes per entry; the ReLU last.
static void forward_by_input(const float* xa, const float* w, const float* bias, const int32_t* p,
                             const int32_t* f, const UnitOf& unit_of, int64_t D, int64_t U, int64_t B, int64_t b0,
                             int64_t b1, float* out) {
  const int64_t width = b1 - b0;
  float* o = out + b0;
  for (int64_t j = 0; j < U; ++j) {
    const float bj = bias[j];
    for (int64_t b = 0; b < width; ++b) o[j * B + b] = bj;
  }
  int32_t at[kFew];
  if (width == 1) {  // acting: see kActAhead
    thread_local std::vector<int32_t> on;
    on.clear();
    for (int64_t i = 0; i < D; ++i)
      if (xa[i * B + b0] != 0.f) on.push_back(int32_t(i));
    const size_t count = on.size();
    for (size_t j = 0; j < count; ++j) {
      if (j + 2 * kActAhead < count) {
        const int32_t far = on[j + 2 * kActAhead];
        prefetch_range(f + p[far], (p[far + 1] - p[far]) * sizeof(int32_t));
      }
      if (j + kActAhead < count)
        for (int32_t e = p[on[j + kActAhead]]; e < p[on[j + kActAhead] + 1]; ++e) prefetch_range(w + f[e], 1);
      const int64_t i = on[j];
      const float xv = xa[i * B + b0];
      for (int32_t e = p[i]; e < p[i + 1]; ++e) o[unit_of(f[e]) * B] += w[f[e]] * xv;
    }
  }
  for (int64_t i = 0; width > 1 && i < D; ++i) {
    const float* x = xa + i * B + b0;
    const int count = few_nonzero(x, width, at);
    if (count == 0) continue;
    if (count < kMany) {  // a few samples: touch only their lanes
      for (int32_t e = p[i]; e < p[i + 1]; ++e) {
        const float we = w[f[e]];
        float* row = o + unit_of(f[e]) * B;
        for (int c = 0; c < count; ++c) row[at[c]] += we * x[at[c]];
      }
      continue;
    }
    for (int32_t e = p[i]; e < p[i + 1]; ++e) {
      const float we = w[f[e]];
      float* __restrict__ row = o + unit_of(f[e]) * B;
      for (int64_t b = 0; b < width; ++b) row[b] += we * x[b];
    }
  }
  for (int64_t j = 0; j < U; ++j)
    for (int64_t b = 0; b < width; ++b) o[j * B + b] = o[j * B + b] > 0.f ? o[j * B + b] : 0.f;
}

// xt (N, D, B), weight (N, U * K), bias (N, U) -> relu(pre-activation + bias), (N, U, B), and
// with head_w (N, A, U) and head_b (N, A) the Q-values (N, B, A) of head_forward_agent too, each
// agent's taken while its activations are still in cache. keep false: the activations are not
// wanted (the target network's pass), and stay in a buffer of the thread's, never written out
// to memory, where an agent is computed in one piece. grouped_w: the same weights grouped (see
// forward_chunk; sparse_dqn._grouped_weights), read instead of weight where given.
static std::vector<torch::Tensor> sparse_layer(
    torch::Tensor xt, torch::Tensor weight, torch::Tensor bias, torch::Tensor ptr, torch::Tensor flat,
    torch::Tensor by_input, torch::Tensor by_flat, torch::Tensor members,
    torch::Tensor group_start, torch::Tensor groups, int64_t by_unit, c10::optional<torch::Tensor> head_w,
    c10::optional<torch::Tensor> head_b, bool keep, c10::optional<torch::Tensor> grouped_w) {
  const int64_t N = xt.size(0), D = xt.size(1), B = xt.size(2), E = weight.size(1), U = bias.size(1);
  const int64_t A = head_w ? head_w->size(1) : 0;
  TORCH_CHECK(!head_w || (head_w->is_contiguous() && head_b->is_contiguous() && A <= kMaxActions &&
                          head_w->size(2) == U), "sparse_q: head_w (N, A <= 8, U), head_b (N, A), contiguous");
  const int64_t parts = std::min(parts_per_agent(N), B);
  keep = keep || parts > 1 || !head_w;  // the pieces of one agent meet in out
  auto out = keep ? torch::empty({N, U, B}, xt.options()) : torch::Tensor();
  auto q = head_w ? torch::empty({N, B, A}, xt.options()) : torch::Tensor();
  const float* xp = xt.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  TORCH_CHECK(!grouped_w || (grouped_w->is_contiguous() && grouped_w->sizes() == weight.sizes()),
              "sparse_q: grouped_w (N, U * K), contiguous");
  const float* gwp = grouped_w ? grouped_w->data_ptr<float>() : nullptr;
  float* op = keep ? out.data_ptr<float>() : nullptr;
  const Inverse inv(ptr, flat);
  const UnitOf unit_of(E, U);
  const int32_t* bi = by_input.data_ptr<int32_t>();
  const int32_t* bf = by_flat.data_ptr<int32_t>();
  const int32_t* mp = members.data_ptr<int32_t>();
  const int32_t* gs = group_start.data_ptr<int32_t>();
  const int32_t* gc = groups.data_ptr<int32_t>();
  const int64_t own_groups = groups.size(0) > 1;  // else one set for all agents (masks alike: spatial)
  std::vector<char> unit_wise(N, B == kByUnit && by_unit == 1);  // decided once per agent, for all its pieces
  if (B == kByUnit && by_unit == -1)
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        unit_wise[n] = gc[n * own_groups] * kChunk <= U  // in groups a chunk long: by unit, always
                       || by_unit_is_cheaper(xp + n * D * B, inv.ptr_of(n, D), D, B, N);
    });
  auto head = [&](int64_t n, const float* h) {  // denormals kept here, as MKL keeps them
    head_forward_agent(h, head_w->data_ptr<float>() + n * A * U, head_b->data_ptr<float>() + n * A, U, B, A,
                       q.data_ptr<float>() + n * B * A);
  };
  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(keep ? 0 : U * B);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / parts, part = item % parts;
      float* agent_out = keep ? op + n * U * B : scratch.data();
      {
        FlushDenormals flush;
        if (unit_wise[n]) {
          const int64_t m = n * own_groups;
          forward_by_unit<kByUnit>(xp + n * D * B, wp + n * E, gwp ? gwp + n * E : nullptr, bp + n * U,
                                   inv.ptr_of(n, D), bi + m * E, bf + m * E, mp + m * U, gs + m * (U + 1),
                                   gc[m] * part / parts, gc[m] * (part + 1) / parts, D, E / U, agent_out);
        } else if (B == 1 && gwp && by_unit != 0 && gc[n * own_groups] * kChunk <= U) {
          // From the agent's own layout, summing by group reads each member's row in turn: slower
          // than the loop over inputs (6.9 against 6.0 us per agent, 64 Breakout spatial agents).
          const int64_t m = n * own_groups;
          forward_one_grouped(xp + n * D, gwp + n * E, bp + n * U, bi + m * E, mp + m * U, gs + m * (U + 1), gc[m],
                              E / U, agent_out);
        } else {
          forward_by_input(xp + n * D * B, wp + n * E, bp + n * U, inv.ptr_of(n, D), inv.flat_of(n, E), unit_of, D,
                           U, B, B * part / parts, B * (part + 1) / parts, agent_out);
        }
      }
      if (head_w && parts == 1) head(n, agent_out);
    }
  });
  if (head_w && parts > 1)
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) head(n, op + n * U * B);
    });
  return {out, q};
}

torch::Tensor sparse_forward(torch::Tensor xt, torch::Tensor weight, torch::Tensor bias, torch::Tensor ptr,
                             torch::Tensor flat, torch::Tensor by_input, torch::Tensor by_flat,
                             torch::Tensor members, torch::Tensor group_start, torch::Tensor groups,
                             int64_t by_unit = -1,  // 1 or 0 forces a way (the tests compare them), -1 chooses
                             c10::optional<torch::Tensor> grouped_w = c10::nullopt) {
  return sparse_layer(xt, weight, bias, ptr, flat, by_input, by_flat, members, group_start, groups, by_unit,
                      c10::nullopt, c10::nullopt, true, grouped_w)[0];
}

// The layer and the head in one pass: (activations, or an undefined tensor where keep is false;
// the Q-values).
std::vector<torch::Tensor> sparse_q(torch::Tensor xt, torch::Tensor weight, torch::Tensor bias, torch::Tensor ptr,
                                    torch::Tensor flat, torch::Tensor by_input,
                                    torch::Tensor by_flat, torch::Tensor members, torch::Tensor group_start,
                                    torch::Tensor groups, torch::Tensor head_w, torch::Tensor head_b, bool keep,
                                    c10::optional<torch::Tensor> grouped_w) {
  return sparse_layer(xt, weight, bias, ptr, flat, by_input, by_flat, members, group_start, groups, -1,
                      head_w, head_b, keep, grouped_w);
}

static inline void transpose16(Vec* r) {  // r[0..15], rows of 16 floats, transposed in place
  for (int h = 8; h >= 1; h /= 2) {
    typedef int Mask __attribute__((vector_size(kLanes * sizeof(int))));
    Mask low, high;
    for (int j = 0; j < kLanes; ++j) {
      low[j] = (j & h) ? kLanes + j - h : j;
      high[j] = (j & h) ? kLanes + j : j + h;
    }
    for (int i = 0; i < kLanes; ++i)
      if (!(i & h)) {
        const Vec a = r[i], b = r[i + h];
        r[i] = __builtin_shuffle(a, b, low);
        r[i + h] = __builtin_shuffle(a, b, high);
      }
  }
}

// A gradient g (U, B) laid out by sample, (B, padded), 16 x 16 tiles at a time transposed in
// registers where the batch is whole vectors. One float at a time, each store to another sample's
// row, the weight gradient took 1.08x as long for 64 Space Invaders predictive agents and 1.36x
// for 64 Breakout spatial ones (two threads, the same real batches).
static void lay_out_by_sample(const float* g, int64_t U, int64_t B, int64_t padded, float* by_sample) {
  if (B % kLanes != 0) {
    for (int64_t j = 0; j < U; ++j)
      for (int64_t b = 0; b < B; ++b) by_sample[b * padded + j] = g[j * B + b];
    return;
  }
  for (int64_t u0 = 0; u0 < U; u0 += kLanes) {
    const int64_t width = std::min<int64_t>(kLanes, U - u0);  // a last tile's missing units: zeros, in the padding
    for (int64_t b0 = 0; b0 < B; b0 += kLanes) {
      Vec r[kLanes] = {};
      for (int64_t i = 0; i < width; ++i) std::memcpy(&r[i], g + (u0 + i) * B + b0, sizeof(Vec));
      transpose16(r);
      for (int64_t b = 0; b < kLanes; ++b) std::memcpy(by_sample + (b0 + b) * padded + u0, &r[b], sizeof(Vec));
    }
  }
}

// The weight gradient of one agent's inputs i_begin..i_end, from its gradient g (U, B) of the
// pre-activations and its input x (D, B), written to its row w (U * K), whose other entries are
// zero. A weight's gradient is its unit's gradient times its input, summed over the batch in batch
// order. An input on in a few samples: each weight adds up those few. An input on in many samples: a
// weight-by-weight sum would be one chain of dependent adds per weight, so every unit's sum is
// computed at once, from the gradient laid out by sample, as vectors across units that add one
// sample after another in batch order (the same order, so the same bits as the chain); each
// weight then takes its unit's sum. Inputs on in the same samples, as 1s (MinAtar's observations
// are 0/1), have the same sums, made once: 91 inputs of a Space Invaders batch share 47 sets of
// samples (predictive masks), and Breakout's bricks, on in every sample, share one.
// The tables cost most where each agent has its own (predictive, random masks): they do not stay in
// cache. The entries of the input kAhead on-inputs ahead are asked for, and units are computed from
// entries (UnitOf) for every mask, not read: 8.6 to 7.2 ms for 64 Space Invaders predictive agents,
// one thread; spatial's, whose one set of tables stays in cache, unchanged within noise.
constexpr size_t kAhead = 4;

struct WeightGradScratch {  // a thread's, reused from agent to agent
  std::vector<float> by_sample, sums;  // sums: a row of padded units per set of samples, row 0 for one not shared
  std::unordered_map<uint64_t, int64_t> row_of;  // the rows of sets of samples, by their bits
  std::vector<int32_t> lanes, on_inputs;
};

static void weight_grad_piece(const float* g, const float* xa, const int32_t* p, const int32_t* f,
                              const UnitOf& unit_of, int64_t U, int64_t B, int64_t i_begin, int64_t i_end,
                              float* w, WeightGradScratch& scratch) {
  const int64_t padded = (U + kBlock - 1) / kBlock * kBlock;
  auto& [by_sample, sums, row_of, lanes, on_inputs] = scratch;
  lanes.resize(B);
  bool laid_out = false;
  on_inputs.clear();
  row_of.clear();
  for (int64_t i = i_begin; i < i_end; ++i)
    if (on_count(xa + i * B, B)) on_inputs.push_back(int32_t(i));
  int32_t at[kFew];
  for (size_t j = 0; j < on_inputs.size(); ++j) {
    const int64_t i = on_inputs[j];
    if (j + kAhead < on_inputs.size()) {
      const int32_t ahead = on_inputs[j + kAhead];
      prefetch_range(f + p[ahead], (p[ahead + 1] - p[ahead]) * sizeof(int32_t));
    }
    const float* x = xa + i * B;
    const int count = few_nonzero(x, B, at);
    if (count < kMany) {
      for (int32_t e = p[i]; e < p[i + 1]; ++e) {
        const float* row = g + unit_of(f[e]) * B;
        float s = 0.f;
        for (int c = 0; c < count; ++c) s += row[at[c]] * x[at[c]];
        w[f[e]] = s;
      }
      continue;
    }
    uint64_t lanes_on = 0;  // the samples the input is on in, where the batch fits in 64 bits
    bool shared = B <= 64;  // and on as 1s: then its sums are those of every such input
    int on = 0;
    for (int64_t b = 0; b < B; ++b)
      if (x[b] != 0.f) {
        lanes[on++] = int32_t(b);
        shared = shared && x[b] == 1.f;
        if (B <= 64) lanes_on |= uint64_t(1) << b;
      }
    const auto found = shared ? row_of.find(lanes_on) : row_of.end();
    int64_t row = 0;
    if (found != row_of.end()) {
      row = found->second;
    } else {
      if (shared) row = int64_t(row_of.size()) + 1, row_of.emplace(lanes_on, row);
      if (int64_t(sums.size()) < (row + 1) * padded) sums.resize((row + 1) * padded);
      if (!laid_out) {  // the agent's gradient as (B, units), on first need
        if (int64_t(by_sample.size()) != B * padded) by_sample.assign(B * padded, 0.f);  // padding stays 0
        lay_out_by_sample(g, U, B, padded, by_sample.data());
        laid_out = true;
      }
      for (int64_t u0 = 0; u0 < padded; u0 += kBlock) {
        Vec acc[kVecs] = {};
        for (int c = 0; c < on; ++c) {
          const float* r0 = by_sample.data() + int64_t(lanes[c]) * padded + u0;
          const float xv = x[lanes[c]];
          for (int v = 0; v < kVecs; ++v) {
            Vec r;
            std::memcpy(&r, r0 + v * kLanes, sizeof r);
            acc[v] += r * xv;
          }
        }
        std::memcpy(sums.data() + row * padded + u0, acc, sizeof acc);
      }
    }
    const float* s = sums.data() + row * padded;
    for (int32_t e = p[i]; e < p[i + 1]; ++e) w[f[e]] = s[unit_of(f[e])];
  }
}

// grad (N, U, B) of the pre-activations, xt (N, D, B) -> weight gradient (N, U * K). Pieces of an
// agent are ranges of inputs: each weight belongs to one input, so they write disjoint entries.
torch::Tensor sparse_grad_weight(torch::Tensor grad, torch::Tensor xt, torch::Tensor ptr,
                                 torch::Tensor flat, int64_t entries) {
  const int64_t N = xt.size(0), D = xt.size(1), B = xt.size(2), U = grad.size(1);
  const int64_t parts = std::min(parts_per_agent(N), D);
  // Pieces of one agent share its row of zeros, filled before any of them writes; an agent in one
  // piece fills its own row just before its writes, which then find its lines in cache, where a
  // fill of the whole population first had left them in memory.
  auto gw = parts > 1 ? torch::zeros({N, entries}, xt.options()) : torch::empty({N, entries}, xt.options());
  const float* xp = xt.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  float* wp = gw.data_ptr<float>();
  const Inverse inv(ptr, flat);
  const UnitOf unit_of(entries, U);
  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    WeightGradScratch scratch;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / parts, part = item % parts;
      if (parts == 1) std::memset(wp + n * entries, 0, entries * sizeof(float));
      weight_grad_piece(gp + n * U * B, xp + n * D * B, inv.ptr_of(n, D), inv.flat_of(n, entries), unit_of, U, B,
                        D * part / parts, D * (part + 1) / parts, wp + n * entries, scratch);
    }
  });
  return gw;
}

// The gradient through the ReLU: grad_out where out > 0, else 0, (N, U, B) contiguous, as
// torch.where(out > 0, grad_out, 0.0) computes it. grad_out arrives as the transpose of the head's
// (N, B, U) gradient, which torch's gt and where read with a stride of U floats per sample. Read
// here in tiles of kTile units (a cache line per sample) and transposed through a small buffer:
// 2.8 ms against 6.8 for 64 Breakout agents (benchmarks/kernels_relu_grad.json).
constexpr int64_t kTile = 16;
torch::Tensor relu_grad(torch::Tensor out, torch::Tensor grad_out) {
  TORCH_CHECK(out.is_contiguous() && out.sizes() == grad_out.sizes(), "relu_grad: out (N, U, B), contiguous");
  const int64_t N = out.size(0), U = out.size(1), B = out.size(2);
  const int64_t s0 = grad_out.stride(0), s1 = grad_out.stride(1), s2 = grad_out.stride(2);
  auto grad = torch::empty_like(out);
  const float* op = out.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  float* rp = grad.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(kTile * B);
    for (int64_t n = begin; n < end; ++n)
      for (int64_t u0 = 0; u0 < U; u0 += kTile) {
        const int64_t width = std::min(kTile, U - u0);
        const float* g = gp + n * s0 + u0 * s1;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < width; ++j) tile[j * B + b] = g[b * s2 + j * s1];
        const float* o = op + (n * U + u0) * B;
        float* r = rp + (n * U + u0) * B;
        for (int64_t i = 0; i < width * B; ++i) r[i] = o[i] > 0.f ? tile[i] : 0.f;
      }
  });
  return grad;
}

// grad (N, U, B), weight (N, U * K) -> input gradient, transposed: (N, D, B)
torch::Tensor sparse_grad_input(torch::Tensor grad, torch::Tensor weight, torch::Tensor ptr,
                                torch::Tensor flat, int64_t inputs) {
  const int64_t N = grad.size(0), U = grad.size(1), B = grad.size(2), E = weight.size(1);
  auto gx = torch::zeros({N, inputs, B}, grad.options());
  const float* gp = grad.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* xp = gx.data_ptr<float>();
  const Inverse inv(ptr, flat);
  const UnitOf unit_of(E, U);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t n = begin; n < end; ++n) {
      const float* w = wp + n * E;
      const int32_t* p = inv.ptr_of(n, inputs);
      const int32_t* f = inv.flat_of(n, E);
      for (int64_t i = 0; i < inputs; ++i) {
        float* x = xp + (n * inputs + i) * B;
        for (int32_t e = p[i]; e < p[i + 1]; ++e) {
          const float we = w[f[e]];
          const float* row = gp + (n * U + unit_of(f[e])) * B;
          for (int64_t b = 0; b < B; ++b) x[b] += we * row[b];
        }
      }
    }
  });
  return gx;
}

// The head's gradient through the ReLU to the sparse layer's pre-activations: where out (N, U, B)
// is positive, grad (N, B, A) @ weight (N, A, U), written units-major; elsewhere 0. Autograd's
// bmm for it gives MKL's order, one fused multiply-add per action in action order from zero,
// which std::fma reproduces; relu_grad then applied the mask. In one pass, MKL's (N, B, U)
// product is never written and read back across its stride.
static void head_relu_grad_agent(const float* __restrict__ g, const float* __restrict__ w,
                                 const float* __restrict__ out, int64_t U, int64_t B, int64_t A,
                                 float* __restrict__ acc, float* __restrict__ r) {
  for (int64_t u = 0; u < U; ++u) {
    for (int64_t b = 0; b < B; ++b) acc[b] = 0.f;
    for (int64_t a = 0; a < A; ++a) {
      const float wa = w[a * U + u];
      const float* ga = g + a * B;
      for (int64_t b = 0; b < B; ++b) acc[b] = std::fma(ga[b], wa, acc[b]);
    }
    const float* o = out + u * B;
    float* ru = r + u * B;
    for (int64_t b = 0; b < B; ++b) ru[b] = o[b] > 0.f ? acc[b] : 0.f;
  }
}

torch::Tensor head_relu_grad(torch::Tensor out, torch::Tensor grad, torch::Tensor weight) {
  const int64_t N = out.size(0), U = out.size(1), B = out.size(2), A = grad.size(2);
  TORCH_CHECK(out.is_contiguous() && weight.is_contiguous() && grad.size(1) == B && weight.size(1) == A &&
              weight.size(2) == U, "head_relu_grad: out (N, U, B), grad (N, B, A), weight (N, A, U)");
  auto by_action = grad.transpose(1, 2).contiguous();  // (N, A, B): each action's column of the batch
  auto result = torch::empty_like(out);
  const float* gp = by_action.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* op = out.data_ptr<float>();
  float* rp = result.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(B);
    for (int64_t n = begin; n < end; ++n)
      head_relu_grad_agent(gp + n * A * B, wp + n * A * U, op + n * U * B, U, B, A, acc.data(), rp + n * U * B);
  });
  return result;
}

// The head's weight gradient, out (N, U, B) of the ReLU and the Q-values' gradient grad (N, B, A)
// -> (N, A, U): the product autograd makes, out @ grad, in the order of sums MKL takes for it at
// the DQN's batch of 32 and MinAtar's 6 actions (tests/test_network.py), which is not one order:
// each product rounded on its own and added in batch order from zero, except for actions 0 and 1
// of odd units, whose batch comes in eights, the first four added in turn and the last four summed
// on their own first. Units 16 at a time: their rows transposed in registers, so that a vector
// holds one sample of 16 units. MKL takes 5x longer (benchmarks/head_layout.py).
constexpr int64_t kHeadBatch = 32, kHeadActions = 6;

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
static void head_grad_weight_agent(const float* __restrict__ out, const float* __restrict__ g, int64_t U,
                                   float* __restrict__ gw) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  static_assert(kHeadBatch == 2 * kLanes, "a unit's row of the batch is two vectors");
  Vec odd_lanes;
  for (int j = 0; j < kLanes; ++j) odd_lanes[j] = float(j & 1);
  for (int64_t u0 = 0; u0 < U; u0 += kLanes) {
    const int64_t width = std::min<int64_t>(kLanes, U - u0);  // the last tile's missing units: zeros
    Vec rows[2][kLanes] = {};  // samples 0-15 and 16-31 of units u0..u0+15, then transposed: by sample
    for (int64_t i = 0; i < width; ++i)
      for (int half = 0; half < 2; ++half)
        std::memcpy(&rows[half][i], out + (u0 + i) * kHeadBatch + half * kLanes, sizeof(Vec));
    transpose16(rows[0]);
    transpose16(rows[1]);
    const Vec* sample[kHeadBatch];
    for (int64_t b = 0; b < kHeadBatch; ++b) sample[b] = &rows[b / kLanes][b % kLanes];
    for (int64_t a = 0; a < kHeadActions; ++a) {
      Vec acc = Vec{};
      for (int64_t b = 0; b < kHeadBatch; ++b) {
        const Vec product = *sample[b] * g[b * kHeadActions + a];
        acc = acc + product;
      }
      if (a < 2) {  // the odd units' order (u0 is even: a lane's parity is its unit's)
        Vec eights = Vec{};
        for (int64_t b0 = 0; b0 < kHeadBatch; b0 += 8) {
          for (int64_t b = b0; b < b0 + 4; ++b) {
            const Vec product = *sample[b] * g[b * kHeadActions + a];
            eights = eights + product;
          }
          Vec last = *sample[b0 + 4] * g[(b0 + 4) * kHeadActions + a];
          for (int64_t b = b0 + 5; b < b0 + 8; ++b) {
            const Vec product = *sample[b] * g[b * kHeadActions + a];
            last = last + product;
          }
          eights = eights + last;
        }
        acc = odd_lanes != 0.f ? eights : acc;
      }
      std::memcpy(gw + a * U + u0, &acc, width * sizeof(float));
    }
  }
}
#pragma GCC pop_options

torch::Tensor head_grad_weight(torch::Tensor out, torch::Tensor grad) {
  const int64_t N = out.size(0), U = out.size(1);
  TORCH_CHECK(out.is_contiguous() && grad.is_contiguous() && out.size(2) == kHeadBatch &&
              grad.size(1) == kHeadBatch && grad.size(2) == kHeadActions,
              "head_grad_weight: out (N, U, 32) and grad (N, 32, 6), contiguous");
  auto gw = torch::empty({N, kHeadActions, U}, out.options());
  const float* op = out.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  float* wp = gw.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)  // denormals kept, as MKL keeps them
      head_grad_weight_agent(op + n * U * kHeadBatch, gp + n * kHeadBatch * kHeadActions, U,
                             wp + n * kHeadActions * U);
  });
  return gw;
}

// The update's backward through the sparse network (_SparseQCpp), agent by agent: the head's weight
// gradient (head_grad_weight), the gradient through the ReLU (head_relu_grad: returned, for the
// bias gradient, its sums over the batch) and from it, while it is in cache, the sparse layer's
// weight gradient (sparse_grad_weight). Each agent's activations and that gradient are read from
// memory once, where the three kernels read them three times. -> (head's weight gradient (N, A, U),
// gradient through the ReLU (N, U, B), layer's weight gradient (N, U * K)).
std::vector<torch::Tensor> sparse_q_backward(torch::Tensor out, torch::Tensor grad_q, torch::Tensor head_w,
                                             torch::Tensor xt, torch::Tensor ptr, torch::Tensor flat) {
  const int64_t N = out.size(0), U = out.size(1), B = out.size(2), D = xt.size(1), entries = flat.size(1);
  TORCH_CHECK(out.is_contiguous() && grad_q.is_contiguous() && head_w.is_contiguous() && B == kHeadBatch &&
              grad_q.size(1) == kHeadBatch && grad_q.size(2) == kHeadActions && head_w.size(2) == U,
              "sparse_q_backward: out (N, U, 32), grad_q (N, 32, 6), head_w (N, 6, U), contiguous");
  if (parts_per_agent(N) > 1) {  // too few agents to keep every thread busy one agent each
    auto relu = head_relu_grad(out, grad_q, head_w);
    return {head_grad_weight(out, grad_q), relu, sparse_grad_weight(relu, xt, ptr, flat, entries)};
  }
  const int64_t A = kHeadActions;
  auto by_action = grad_q.transpose(1, 2).contiguous();
  auto grad_head_w = torch::empty({N, A, U}, out.options());
  auto relu = torch::empty_like(out);
  auto gw = torch::empty({N, entries}, out.options());
  const float* op = out.data_ptr<float>();
  const float* qp = grad_q.data_ptr<float>();
  const float* ap = by_action.data_ptr<float>();
  const float* hp = head_w.data_ptr<float>();
  const float* xp = xt.data_ptr<float>();
  float* hg = grad_head_w.data_ptr<float>();
  float* rp = relu.data_ptr<float>();
  float* wp = gw.data_ptr<float>();
  const Inverse inv(ptr, flat);
  const UnitOf unit_of(entries, U);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(B);
    WeightGradScratch scratch;
    for (int64_t n = begin; n < end; ++n) {  // the head's denormals kept, as MKL keeps them
      head_grad_weight_agent(op + n * U * B, qp + n * B * A, U, hg + n * A * U);
      head_relu_grad_agent(ap + n * A * B, hp + n * A * U, op + n * U * B, U, B, A, acc.data(), rp + n * U * B);
      FlushDenormals flush;
      std::memset(wp + n * entries, 0, entries * sizeof(float));
      weight_grad_piece(rp + n * U * B, xp + n * D * B, inv.ptr_of(n, D), inv.flat_of(n, entries), unit_of, U, B, 0,
                        D, wp + n * entries, scratch);
    }
  });
  return {grad_head_w, relu, gw};
}

// One step of centred RMSprop (momentum 0) in a single pass over memory, the variance clamped at
// zero before its square root, as CentredRMSprop in sparse_dqn.py does it in four passes. With
// l1 (one coefficient per agent, the tensor's leading dimension), the gradient of the L1 penalty,
// l1[n] * sign(weight), is added first: the number autograd's abs backward would have added,
// without the passes over every weight that the penalty's forward and backward take.
template <bool kL1>
static void rmsprop_range(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ sq,
                          float* __restrict__ mean, int64_t begin, int64_t end, float l1, float a,
                          float keep, float rate, float e) {
  for (int64_t i = begin; i < end; ++i) {
    float gi = g[i];
    if (kL1) gi += l1 * float((p[i] > 0.f) - (p[i] < 0.f));
    const float s = sq[i] * a + keep * gi * gi;
    const float m = mean[i] + keep * (gi - mean[i]);
    const float d = s - m * m;
    const float var = d > 0.f ? d : 0.f;
    p[i] -= rate * gi / (std::sqrt(var) + e);
    sq[i] = s;
    mean[i] = m;
  }
}

// One step's tensors and numbers: range(begin, end) steps those entries of the flat parameter.
struct RmspropStep {
  float* p;
  const float* g;
  float *sq, *mean;
  const float* coef;  // l1's, one per agent, or null
  int64_t block;      // weights per agent
  float a, keep, rate, e;
  RmspropStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& square_avg, torch::Tensor& grad_avg,
              double lr, double alpha, double eps, const c10::optional<torch::Tensor>& l1)
      : p(param.data_ptr<float>()), g(grad.data_ptr<float>()), sq(square_avg.data_ptr<float>()),
        mean(grad_avg.data_ptr<float>()), coef(l1 ? l1->data_ptr<float>() : nullptr),
        block(l1 ? param.numel() / l1->numel() : param.numel()), a(alpha), keep(1.0 - alpha), rate(lr), e(eps) {
    param.unsafeGetTensorImpl()->bump_version();  // an in-place change, as torch's own ops record it
  }
  void range(int64_t begin, int64_t end) const {
    if (coef == nullptr) return rmsprop_range<false>(p, g, sq, mean, begin, end, 0.f, a, keep, rate, e);
    for (int64_t i = begin; i < end;) {  // one agent's coefficient per stretch
      const int64_t n = i / block, stop = std::min(end, (n + 1) * block);
      rmsprop_range<true>(p, g, sq, mean, i, stop, coef[n], a, keep, rate, e);
      i = stop;
    }
  }
};

void centred_rmsprop_step(torch::Tensor param, torch::Tensor grad, torch::Tensor square_avg,
                          torch::Tensor grad_avg, double lr, double alpha, double eps,
                          c10::optional<torch::Tensor> l1) {
  const RmspropStep step(param, grad, square_avg, grad_avg, lr, alpha, eps, l1);
  at::parallel_for(0, param.numel(), 16384, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    step.range(begin, end);
  });
}

// The step of a sparse layer's weights (N, U * K), each agent's followed at once by acting's
// forward (forward_by_input, one sample) on the next frame's observation xt (N, D, 1), with its bias
// (N, U) already stepped: the agent's new weights are still in cache, where acting on its own reads
// them back from memory, scattered, after the whole population's step. -> relu activations (N, U, 1).
torch::Tensor centred_rmsprop_step_then_act(torch::Tensor param, torch::Tensor grad, torch::Tensor square_avg,
                                            torch::Tensor grad_avg, double lr, double alpha, double eps,
                                            c10::optional<torch::Tensor> l1, torch::Tensor xt, torch::Tensor bias,
                                            torch::Tensor ptr, torch::Tensor flat) {
  const int64_t N = param.size(0), E = param.numel() / N, D = xt.size(1), U = bias.size(1);
  TORCH_CHECK(xt.is_contiguous() && xt.size(0) == N && xt.size(2) == 1 && bias.is_contiguous() && bias.size(0) == N,
              "centred_rmsprop_step_then_act: xt (N, D, 1), bias (N, U), contiguous");
  const bool by_agent = parts_per_agent(N) == 1;  // else the step is cut finer than agents, and acts after
  if (!by_agent) centred_rmsprop_step(param, grad, square_avg, grad_avg, lr, alpha, eps, l1);
  std::optional<RmspropStep> step;
  if (by_agent) step.emplace(param, grad, square_avg, grad_avg, lr, alpha, eps, l1);
  const float* p = param.data_ptr<float>();
  auto out = torch::empty({N, U, 1}, xt.options());
  const float* xp = xt.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const Inverse inv(ptr, flat);
  const UnitOf unit_of(E, U);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t n = begin; n < end; ++n) {
      if (step) step->range(n * E, (n + 1) * E);
      forward_by_input(xp + n * D, p + n * E, bp + n * U, inv.ptr_of(n, D), inv.flat_of(n, E), unit_of, D, U, 1, 0, 1,
                       op + n * U);
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// MinAtar's Breakout and Space Invaders, one frame for N agents on the CPU: the rules of
// BatchedBreakout.step and BatchedSpaceInvaders.step in sparse_dqn.py, statement for statement,
// on the same state tensors, updated in place. A frame of a handful of agents costs the torch
// version dozens of small operations; here it is a loop. tests/test_games.py checks both against
// minatar itself.
// ---------------------------------------------------------------------------------------------
namespace {
constexpr int64_t kGrid = 10;
constexpr int64_t kBallDx[4] = {-1, 1, 1, -1}, kBallDy[4] = {-1, -1, 1, 1};
constexpr int64_t kFlipX[4] = {1, 0, 3, 2}, kFlipY[4] = {3, 2, 1, 0}, kFlipXY[4] = {2, 3, 0, 1};

template <typename T>
T* ptr_of(torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), name, " must be a contiguous CPU tensor");
  return t.data_ptr<T>();
}
}  // namespace

// State: int64 (N,) ball_x, ball_y, ball_dir, pos, last_x, last_y; bool strike (N,), bricks
// (N, 10, 10). actions int64 (N,). Returns (reward, terminal), float32 (N,).
std::vector<torch::Tensor> breakout_step(torch::Tensor ball_x, torch::Tensor ball_y, torch::Tensor ball_dir,
                                         torch::Tensor pos, torch::Tensor last_x, torch::Tensor last_y,
                                         torch::Tensor strike, torch::Tensor bricks, torch::Tensor actions) {
  const int64_t N = ball_x.size(0);
  int64_t *bx = ptr_of<int64_t>(ball_x, "ball_x"), *by = ptr_of<int64_t>(ball_y, "ball_y");
  int64_t *dir = ptr_of<int64_t>(ball_dir, "ball_dir"), *ps = ptr_of<int64_t>(pos, "pos");
  int64_t *lx = ptr_of<int64_t>(last_x, "last_x"), *ly = ptr_of<int64_t>(last_y, "last_y");
  bool* st = ptr_of<bool>(strike, "strike");
  bool* br = ptr_of<bool>(bricks, "bricks");
  const int64_t* act = ptr_of<int64_t>(actions, "actions");
  auto reward = torch::zeros({N}, torch::kFloat32), terminal = torch::zeros({N}, torch::kFloat32);
  float *rw = reward.data_ptr<float>(), *tm = terminal.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    bool* wall = br + n * kGrid * kGrid;
    if (act[n] == 1) ps[n] = std::max<int64_t>(ps[n] - 1, 0);
    else if (act[n] == 3) ps[n] = std::min<int64_t>(ps[n] + 1, 9);
    lx[n] = bx[n], ly[n] = by[n];
    int64_t d = dir[n];
    int64_t x = bx[n] + kBallDx[d], y = by[n] + kBallDy[d];
    if (x < 0 || x > 9) d = kFlipX[d];
    x = std::min<int64_t>(std::max<int64_t>(x, 0), 9);
    const bool top = y < 0;
    if (top) d = kFlipY[d];
    y = std::max<int64_t>(y, 0);
    const bool brick = !top && wall[std::min<int64_t>(y, 9) * kGrid + x];
    const bool score = brick && !st[n];
    if (score) {
      wall[y * kGrid + x] = false;
      y = ly[n];
      d = kFlipY[d];
    }
    const bool bottom = !top && !brick && y == 9;
    if (bottom && !std::any_of(wall, wall + kGrid * kGrid, [](bool b) { return b; }))
      std::fill(wall + kGrid, wall + 4 * kGrid, true);
    const bool under = bottom && bx[n] == ps[n];
    const bool corner = bottom && !under && x == ps[n];
    if (under) d = kFlipY[d];
    else if (corner) d = kFlipXY[d];
    if (under || corner) y = ly[n];
    st[n] = (st[n] || score) && brick;
    bx[n] = x, by[n] = y, dir[n] = d;
    rw[n] = score;
    tm[n] = bottom && !under && !corner;
  }
  return {reward, terminal};
}

// (N, 400) uint8, channel-major: paddle, ball, trail, brick.
torch::Tensor breakout_observe(torch::Tensor ball_x, torch::Tensor ball_y, torch::Tensor pos, torch::Tensor last_x,
                               torch::Tensor last_y, torch::Tensor bricks) {
  const int64_t N = ball_x.size(0), cells = kGrid * kGrid;
  const int64_t *bx = ptr_of<int64_t>(ball_x, "ball_x"), *by = ptr_of<int64_t>(ball_y, "ball_y");
  const int64_t *ps = ptr_of<int64_t>(pos, "pos"), *lx = ptr_of<int64_t>(last_x, "last_x");
  const int64_t* ly = ptr_of<int64_t>(last_y, "last_y");
  const bool* br = ptr_of<bool>(bricks, "bricks");
  auto obs = torch::zeros({N, 4 * cells}, torch::kUInt8);
  uint8_t* o = obs.data_ptr<uint8_t>();
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* on = o + n * 4 * cells;
    TORCH_CHECK(0 <= by[n] && by[n] < kGrid && 0 <= ly[n] && ly[n] < kGrid, "ball row out of the grid");
    on[9 * kGrid + ps[n]] = 1;
    on[cells + by[n] * kGrid + bx[n]] = 1;
    on[2 * cells + ly[n] * kGrid + lx[n]] = 1;
    for (int64_t c = 0; c < cells; ++c) on[3 * cells + c] = br[n * cells + c];
  }
  return obs;
}

// State: int64 (N,) pos, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer,
// ramp_index; bool (N, 10, 10) aliens, f_bullets, e_bullets. Returns (reward, terminal).
std::vector<torch::Tensor> space_invaders_step(torch::Tensor pos, torch::Tensor alien_dir,
                                               torch::Tensor move_interval, torch::Tensor move_timer,
                                               torch::Tensor alien_shot_timer, torch::Tensor shot_timer,
                                               torch::Tensor ramp_index, torch::Tensor aliens_t,
                                               torch::Tensor f_bullets, torch::Tensor e_bullets,
                                               torch::Tensor actions, bool ramping) {
  constexpr int64_t kShotCoolDown = 5, kEnemyShotInterval = 10, cells = kGrid * kGrid;
  const int64_t N = pos.size(0);
  int64_t *ps = ptr_of<int64_t>(pos, "pos"), *dir = ptr_of<int64_t>(alien_dir, "alien_dir");
  int64_t *mi = ptr_of<int64_t>(move_interval, "move_interval"), *mt = ptr_of<int64_t>(move_timer, "move_timer");
  int64_t *ast = ptr_of<int64_t>(alien_shot_timer, "alien_shot_timer");
  int64_t *sht = ptr_of<int64_t>(shot_timer, "shot_timer"), *ri = ptr_of<int64_t>(ramp_index, "ramp_index");
  bool *al = ptr_of<bool>(aliens_t, "aliens"), *fb = ptr_of<bool>(f_bullets, "f_bullets");
  bool* eb = ptr_of<bool>(e_bullets, "e_bullets");
  const int64_t* act = ptr_of<int64_t>(actions, "actions");
  auto reward = torch::zeros({N}, torch::kFloat32), terminal = torch::zeros({N}, torch::kFloat32);
  float *rw = reward.data_ptr<float>(), *tm = terminal.data_ptr<float>();
  bool moved[kGrid * kGrid];
  for (int64_t n = 0; n < N; ++n) {
    bool *a = al + n * cells, *f = fb + n * cells, *e = eb + n * cells;
    auto at = [](bool* g, int64_t r, int64_t c) -> bool& { return g[r * kGrid + c]; };
    auto count = [&]() { return int64_t(std::count(a, a + cells, true)); };
    const bool fire = act[n] == 5 && sht[n] == 0;
    if (fire) at(f, 9, ps[n]) = true, sht[n] = kShotCoolDown;
    if (!fire && act[n] == 1) ps[n] = std::max<int64_t>(ps[n] - 1, 0);
    else if (!fire && act[n] == 3) ps[n] = std::min<int64_t>(ps[n] + 1, 9);
    std::copy(f + kGrid, f + cells, f);  // friendly bullets rise a row; the bottom row empties
    std::fill(f + 9 * kGrid, f + cells, false);
    std::copy_backward(e, e + 9 * kGrid, e + cells);  // enemy bullets fall a row
    std::fill(e, e + kGrid, false);
    bool term = at(e, 9, ps[n]) || at(a, 9, ps[n]);

    const bool move = mt[n] == 0;
    if (move) mt[n] = std::min(count(), mi[n]);
    bool left_edge = false, right_edge = false, bottom_row = false;
    for (int64_t r = 0; r < kGrid; ++r) left_edge |= at(a, r, 0), right_edge |= at(a, r, 9);
    for (int64_t c = 0; c < kGrid; ++c) bottom_row |= at(a, 9, c);
    const bool turn = move && ((left_edge && dir[n] < 0) || (right_edge && dir[n] > 0));
    term |= turn && bottom_row;
    if (turn) dir[n] = -dir[n];
    if (turn) {  // down a row, the bottom row wrapping to the top as torch.roll does
      for (int64_t r = 0; r < kGrid; ++r)
        for (int64_t c = 0; c < kGrid; ++c) moved[r * kGrid + c] = at(a, (r + 9) % kGrid, c);
      std::copy(moved, moved + cells, a);
    } else if (move) {  // sideways, wrapping likewise
      const int64_t shift = dir[n] > 0 ? 9 : 1;
      for (int64_t r = 0; r < kGrid; ++r)
        for (int64_t c = 0; c < kGrid; ++c) moved[r * kGrid + c] = at(a, r, (c + shift) % kGrid);
      std::copy(moved, moved + cells, a);
    }
    term |= move && at(a, 9, ps[n]);

    if (ast[n] == 0) {
      ast[n] = kEnemyShotInterval;
      int64_t col = 0, best = 10 * kGrid * kGrid;  // nearest column with an alien, ties to the left
      for (int64_t c = 0; c < kGrid; ++c) {
        bool occupied = false;
        for (int64_t r = 0; r < kGrid; ++r) occupied |= at(a, r, c);
        const int64_t rank = occupied ? std::abs(c - ps[n]) * kGrid + c : 10 * kGrid * kGrid;
        if (rank < best) best = rank, col = c;
      }
      int64_t row = -1;  // its lowest alien; none gives -1, which torch's indexing reads as row 9
      for (int64_t r = 0; r < kGrid; ++r)
        if (at(a, r, col)) row = r;
      at(e, row < 0 ? row + kGrid : row, col) = true;
    }

    int64_t kills = 0;
    for (int64_t c = 0; c < cells; ++c)
      if (a[c] && f[c]) ++kills, a[c] = false, f[c] = false;
    if (sht[n] > 0) --sht[n];
    --mt[n];
    --ast[n];
    if (count() == 0) {
      if (mi[n] > 6 && ramping) --mi[n], ++ri[n];
      for (int64_t r = 0; r < 4; ++r) std::fill(a + r * kGrid + 2, a + r * kGrid + 8, true);
    }
    rw[n] = float(kills);
    tm[n] = term;
  }
  return {reward, terminal};
}

// (N, 600) uint8, channel-major: cannon, alien, alien_left, alien_right, friendly_bullet,
// enemy_bullet.
torch::Tensor space_invaders_observe(torch::Tensor pos, torch::Tensor alien_dir, torch::Tensor aliens,
                                     torch::Tensor f_bullets, torch::Tensor e_bullets) {
  const int64_t N = pos.size(0), cells = kGrid * kGrid;
  const int64_t *ps = ptr_of<int64_t>(pos, "pos"), *dir = ptr_of<int64_t>(alien_dir, "alien_dir");
  const bool *al = ptr_of<bool>(aliens, "aliens"), *fb = ptr_of<bool>(f_bullets, "f_bullets");
  const bool* eb = ptr_of<bool>(e_bullets, "e_bullets");
  auto obs = torch::zeros({N, 6 * cells}, torch::kUInt8);
  uint8_t* o = obs.data_ptr<uint8_t>();
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* on = o + n * 6 * cells;
    const bool left = dir[n] < 0;
    on[9 * kGrid + ps[n]] = 1;
    for (int64_t c = 0; c < cells; ++c) {
      const bool alien = al[n * cells + c];
      on[cells + c] = alien;
      on[2 * cells + c] = alien && left;
      on[3 * cells + c] = alien && !left;
      on[4 * cells + c] = fb[n * cells + c];
      on[5 * cells + c] = eb[n * cells + c];
    }
  }
  return obs;
}

// ---------------------------------------------------------------------------------------------
// Replay: observations stored bit-packed, most significant bit first (numpy's packbits), as
// Replay.pack and Replay.unpack in sparse_dqn.py do it in torch ops.
// ---------------------------------------------------------------------------------------------
// obs (N, D) uint8 0/1 -> (N, ceil(D / 8)) uint8.
torch::Tensor replay_pack(torch::Tensor obs) {
  const int64_t N = obs.size(0), D = obs.size(1), bytes = (D + 7) / 8;
  auto packed = torch::zeros({N, bytes}, torch::kUInt8);
  const uint8_t* o = ptr_of<uint8_t>(obs, "obs");
  uint8_t* out = packed.data_ptr<uint8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) out[n * bytes + d / 8] |= uint8_t(o[n * D + d] << (7 - d % 8));
  return packed;
}

// Rows slots[0..B) of a bit-packed ring (bytes per row) unpacked to float 0/1, laid out (B, inputs)
// or, inputs_major, (inputs, B). Both go a byte at a time so that each write runs along a row.
static void unpack_rows(const uint8_t* ring, const int64_t* slots, int64_t B, int64_t bytes, int64_t inputs,
                        bool inputs_major, uint8_t* column, float* out) {
  if (!inputs_major) {
    for (int64_t b = 0; b < B; ++b) {
      const uint8_t* row = ring + slots[b] * bytes;
      float* to = out + b * inputs;
      int64_t k = 0;
      for (; k + 8 <= inputs; k += 8)
        for (int j = 0; j < 8; ++j) to[k + j] = float((row[k / 8] >> (7 - j)) & 1);
      for (; k < inputs; ++k) to[k] = float((row[k / 8] >> (7 - k % 8)) & 1);
    }
    return;
  }
  for (int64_t byte = 0; byte < bytes; ++byte) {
    for (int64_t b = 0; b < B; ++b) column[b] = ring[slots[b] * bytes + byte];
    for (int64_t k = byte * 8; k < std::min(inputs, byte * 8 + 8); ++k) {
      const int shift = 7 - k % 8;
      float* to = out + k * B;
      for (int64_t b = 0; b < B; ++b) to[b] = float((column[b] >> shift) & 1);
    }
  }
}

// The transitions idx (n, B) of agents (n,) from the rings (A, capacity, ...): observations
// unpacked to float (n, B, D), actions as int64, rewards and terminals as float. inputs_major
// lays the observations out as (n, D, B) and returns that as its (n, B, D) view: the sparse
// layer's kernels read them so, and a separate transposing copy cost about 1 ms a call at 64
// agents.
std::vector<torch::Tensor> replay_sample(torch::Tensor obs, torch::Tensor next_obs, torch::Tensor action,
                                         torch::Tensor reward, torch::Tensor done, torch::Tensor agents,
                                         torch::Tensor idx, int64_t inputs, bool inputs_major) {
  const int64_t n = idx.size(0), B = idx.size(1), capacity = obs.size(1), bytes = obs.size(2);
  const int64_t A = obs.size(0);
  const uint8_t *ob = ptr_of<uint8_t>(obs, "obs"), *nb = ptr_of<uint8_t>(next_obs, "next_obs");
  const uint8_t* ac = ptr_of<uint8_t>(action, "action");
  const float *rw = ptr_of<float>(reward, "reward"), *dn = ptr_of<float>(done, "done");
  const int64_t *ag = ptr_of<int64_t>(agents, "agents"), *ix = ptr_of<int64_t>(idx, "idx");
  const auto shape = inputs_major ? std::vector<int64_t>{n, inputs, B} : std::vector<int64_t>{n, B, inputs};
  auto x = torch::empty(shape, torch::kFloat32), x_next = torch::empty(shape, torch::kFloat32);
  auto a = torch::empty({n, B}, torch::kInt64);
  auto r = torch::empty({n, B}, torch::kFloat32), d = torch::empty({n, B}, torch::kFloat32);
  float *xp = x.data_ptr<float>(), *xn = x_next.data_ptr<float>(), *rp = r.data_ptr<float>(), *dp = d.data_ptr<float>();
  int64_t* ap = a.data_ptr<int64_t>();
  std::vector<int64_t> slots(B);
  std::vector<uint8_t> column(B);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(0 <= ag[i] && ag[i] < A, "agent index out of range");
    for (int64_t b = 0; b < B; ++b) {
      const int64_t t = ix[i * B + b], row = i * B + b;
      TORCH_CHECK(0 <= t && t < capacity, "replay index out of range");
      slots[b] = ag[i] * capacity + t;
      ap[row] = ac[slots[b]], rp[row] = rw[slots[b]], dp[row] = dn[slots[b]];
    }
    unpack_rows(ob, slots.data(), B, bytes, inputs, inputs_major, column.data(), xp + i * B * inputs);
    unpack_rows(nb, slots.data(), B, bytes, inputs, inputs_major, column.data(), xn + i * B * inputs);
  }
  if (inputs_major) x = x.transpose(1, 2), x_next = x_next.transpose(1, 2);
  return {x, a, r, x_next, d};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_forward", &sparse_forward, py::arg("xt"), py::arg("weight"), py::arg("bias"), py::arg("ptr"),
        py::arg("flat"), py::arg("by_input"), py::arg("by_flat"), py::arg("members"),
        py::arg("group_start"), py::arg("groups"), py::arg("by_unit") = -1,
        py::arg("grouped_w") = py::none());
  m.def("sparse_grad_weight", &sparse_grad_weight);
  m.def("sparse_grad_input", &sparse_grad_input);
  m.def("relu_grad", &relu_grad);
  m.def("sparse_q", &sparse_q);
  m.def("head_relu_grad", &head_relu_grad);
  m.def("head_grad_weight", &head_grad_weight);
  m.def("sparse_q_backward", &sparse_q_backward);
  m.def("breakout_step", &breakout_step);
  m.def("breakout_observe", &breakout_observe);
  m.def("space_invaders_step", &space_invaders_step);
  m.def("space_invaders_observe", &space_invaders_observe);
  m.def("replay_pack", &replay_pack);
  m.def("replay_sample", &replay_sample, py::arg("obs"), py::arg("next_obs"), py::arg("action"), py::arg("reward"),
        py::arg("done"), py::arg("agents"), py::arg("idx"), py::arg("inputs"), py::arg("inputs_major") = false);
  m.def("centred_rmsprop_step", &centred_rmsprop_step, py::arg("param"), py::arg("grad"), py::arg("square_avg"),
        py::arg("grad_avg"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("l1") = py::none());
  m.def("centred_rmsprop_step_then_act", &centred_rmsprop_step_then_act, py::arg("param"), py::arg("grad"),
        py::arg("square_avg"), py::arg("grad_avg"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("l1"),
        py::arg("xt"), py::arg("bias"), py::arg("ptr"), py::arg("flat"));
}
