// CPU kernels for sparse_dqn.py's sparse layer and optimiser, loaded with
// torch.utils.cpp_extension. The pure-torch path in sparse_dqn.py computes the same functions
// (up to float rounding) and is what the GPU and machines without a compiler use.
//
// The layer reads its mask by input: for input i of agent n, the entries e of the (units x k)
// weight matrix that look at i (flat[e]) and their units (unit[e]). MinAtar's observations are
// binary and mostly zeros, so visiting only the inputs that are on somewhere in the batch skips
// most of the work of gathering every unit's k inputs.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>
#include <cmath>
#include <cstring>
#if defined(__SSE__)
#include <xmmintrin.h>
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

struct Inverse {
  const int32_t* ptr;   // (N, D + 1): entries of input i are ptr[i] .. ptr[i + 1]
  const int32_t* flat;  // (N, U * K): index into the agent's weight matrix
  const int32_t* unit;  // (N, U * K): the unit of that weight
};

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

template <int64_t kB>  // the batch, whole vectors of kLanes
static void forward_by_unit(const float* __restrict__ x, const float* __restrict__ w, const float* bias,
                            const int32_t* by_input, const int32_t* by_flat, int64_t j0, int64_t j1, int64_t K,
                            float* __restrict__ out) {
  constexpr int64_t kV = kB / kLanes;
  for (int64_t j = j0; j < j1; ++j) {
    Vec acc[kV];
    for (int64_t v = 0; v < kV; ++v) acc[v] = Vec{} + bias[j];
    for (int64_t e = j * K; e < (j + 1) * K; ++e) {
      const float we = w[by_flat[e]];
      const float* column = x + int64_t(by_input[e]) * kB;
      for (int64_t v = 0; v < kV; ++v) {
        Vec c;
        std::memcpy(&c, column + v * kLanes, sizeof c);
        acc[v] += we * c;
      }
    }
    for (int64_t v = 0; v < kV; ++v) {
      const Vec r = acc[v] > 0.f ? acc[v] : Vec{};
      std::memcpy(out + j * kB + v * kLanes, &r, sizeof r);
    }
  }
}

// Whether summing unit by unit is the cheaper way for one agent's batch (x (D, B)). By unit, every
// entry of the mask costs one pass over the lanes. By input, an input off in every sample costs
// nothing, one on in a few samples a few scalar adds per entry, and one on in more about six
// passes over the lanes per entry: each reads and writes its unit's row (benchmarks/kernels.py).
static bool by_unit_is_cheaper(const float* x, const int32_t* ptr, int64_t D, int64_t B, int64_t E) {
  int64_t cost = 0;  // in eighths of a pass over the lanes
  for (int64_t i = 0; i < D; ++i) {
    int64_t on = 0;
    for (int64_t b = 0; b < B; ++b) on += x[i * B + b] != 0.f;
    cost += (ptr[i + 1] - ptr[i]) * (on == 0 ? 0 : on <= kFew ? 2 * on : 48);
  }
  return cost > 8 * E;
}

// xt (N, D, B), weight (N, U * K), bias (N, U) -> relu(pre-activation + bias), (N, U, B).
// Pieces of an agent are ranges of the batch's lanes, or of its units when they are summed by
// unit: they write disjoint parts of out.
torch::Tensor sparse_forward(torch::Tensor xt, torch::Tensor weight, torch::Tensor bias, torch::Tensor ptr,
                             torch::Tensor flat, torch::Tensor unit, torch::Tensor by_input, torch::Tensor by_flat,
                             int64_t by_unit = -1) {  // 1 or 0 forces a way (the tests compare them), -1 chooses
  const int64_t N = xt.size(0), D = xt.size(1), B = xt.size(2), E = weight.size(1), U = bias.size(1);
  auto out = torch::empty({N, U, B}, xt.options());
  const float* xp = xt.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  Inverse inv{ptr.data_ptr<int32_t>(), flat.data_ptr<int32_t>(), unit.data_ptr<int32_t>()};
  const int32_t* bi = by_input.data_ptr<int32_t>();
  const int32_t* bf = by_flat.data_ptr<int32_t>();
  std::vector<char> unit_wise(N, B == kByUnit && by_unit == 1);  // decided once per agent, for all its pieces
  if (B == kByUnit && by_unit == -1)
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        unit_wise[n] = by_unit_is_cheaper(xp + n * D * B, inv.ptr + n * (D + 1), D, B, E);
    });
  const int64_t parts = std::min(parts_per_agent(N), B);
  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / parts, part = item % parts;
      if (unit_wise[n]) {
        forward_by_unit<kByUnit>(xp + n * D * B, wp + n * E, bp + n * U, bi + n * E, bf + n * E,
                                 U * part / parts, U * (part + 1) / parts, E / U, op + n * U * B);
        continue;
      }
      const int64_t b0 = B * part / parts, width = B * (part + 1) / parts - b0;
      const float* w = wp + n * E;
      const int32_t* p = inv.ptr + n * (D + 1);
      const int32_t* f = inv.flat + n * E;
      const int32_t* u = inv.unit + n * E;
      float* o = op + n * U * B + b0;
      for (int64_t j = 0; j < U; ++j) {
        const float bj = bp[n * U + j];
        for (int64_t b = 0; b < width; ++b) o[j * B + b] = bj;
      }
      int32_t at[kFew];
      for (int64_t i = 0; i < D; ++i) {
        const float* x = xp + (n * D + i) * B + b0;
        const int count = few_nonzero(x, width, at);
        if (count == 0) continue;
        if (count < kMany) {  // a few samples: touch only their lanes
          for (int32_t e = p[i]; e < p[i + 1]; ++e) {
            const float we = w[f[e]];
            float* row = o + int64_t(u[e]) * B;
            for (int c = 0; c < count; ++c) row[at[c]] += we * x[at[c]];
          }
          continue;
        }
        for (int32_t e = p[i]; e < p[i + 1]; ++e) {
          const float we = w[f[e]];
          float* __restrict__ row = o + int64_t(u[e]) * B;
          for (int64_t b = 0; b < width; ++b) row[b] += we * x[b];
        }
      }
      for (int64_t j = 0; j < U; ++j)
        for (int64_t b = 0; b < width; ++b) o[j * B + b] = o[j * B + b] > 0.f ? o[j * B + b] : 0.f;
    }
  });
  return out;
}

// grad (N, U, B) of the pre-activations, xt (N, D, B) -> weight gradient (N, U * K). Pieces of an
// agent are ranges of inputs: each weight belongs to one input, so they write disjoint entries.
// A weight's gradient is its unit's gradient times its input, summed over the batch in batch order.
// An input on in a few samples: each weight adds up those few. An input on in many samples: a
// weight-by-weight sum would be one chain of dependent adds per weight, so every unit's sum is
// computed at once, from the gradient laid out by sample, as vectors across units that add one
// sample after another in batch order (the same order, so the same bits as the chain); each
// weight then takes its unit's sum. Inputs on in every sample (Breakout's bricks) share one set.
torch::Tensor sparse_grad_weight(torch::Tensor grad, torch::Tensor xt, torch::Tensor ptr,
                                 torch::Tensor flat, torch::Tensor unit, int64_t entries) {
  const int64_t N = xt.size(0), D = xt.size(1), B = xt.size(2), U = grad.size(1);
  const int64_t padded = (U + kBlock - 1) / kBlock * kBlock;
  auto gw = torch::zeros({N, entries}, xt.options());
  const float* xp = xt.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  float* wp = gw.data_ptr<float>();
  Inverse inv{ptr.data_ptr<int32_t>(), flat.data_ptr<int32_t>(), unit.data_ptr<int32_t>()};
  const int64_t parts = std::min(parts_per_agent(N), D);
  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    std::vector<float> by_sample, sums(padded), always_on_sums(padded);
    std::vector<int32_t> lanes(B);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / parts, part = item % parts;
      const int32_t* p = inv.ptr + n * (D + 1);
      const int32_t* f = inv.flat + n * entries;
      const int32_t* u = inv.unit + n * entries;
      const float* g = gp + n * U * B;
      float* w = wp + n * entries;
      int32_t at[kFew];
      bool laid_out = false, always_on_summed = false;
      for (int64_t i = D * part / parts; i < D * (part + 1) / parts; ++i) {
        const float* x = xp + (n * D + i) * B;
        const int count = few_nonzero(x, B, at);
        if (count == 0) continue;
        if (count < kMany) {
          for (int32_t e = p[i]; e < p[i + 1]; ++e) {
            const float* row = g + int64_t(u[e]) * B;
            float s = 0.f;
            for (int c = 0; c < count; ++c) s += row[at[c]] * x[at[c]];
            w[f[e]] = s;
          }
          continue;
        }
        const bool always_on = std::all_of(x, x + B, [](float v) { return v == 1.f; });
        float* s = always_on ? always_on_sums.data() : sums.data();
        if (!(always_on && always_on_summed)) {
          if (!laid_out) {  // this agent's gradient as (B, units), on first need
            if (by_sample.empty()) by_sample.assign(B * padded, 0.f);  // padding stays 0
            for (int64_t j = 0; j < U; ++j)
              for (int64_t b = 0; b < B; ++b) by_sample[b * padded + j] = g[j * B + b];
            laid_out = true;
          }
          int on = 0;
          for (int64_t b = 0; b < B; ++b) lanes[on] = int32_t(b), on += x[b] != 0.f;
          for (int64_t u0 = 0; u0 < padded; u0 += kBlock) {
            Vec acc[kVecs] = {};
            for (int c = 0; c < on; ++c) {
              const float* row = by_sample.data() + int64_t(lanes[c]) * padded + u0;
              const float xv = x[lanes[c]];
              for (int v = 0; v < kVecs; ++v) {
                Vec r;
                std::memcpy(&r, row + v * kLanes, sizeof r);
                acc[v] += r * xv;
              }
            }
            std::memcpy(s + u0, acc, sizeof acc);
          }
          always_on_summed |= always_on;
        }
        for (int32_t e = p[i]; e < p[i + 1]; ++e) w[f[e]] = s[u[e]];
      }
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
                                torch::Tensor flat, torch::Tensor unit, int64_t inputs) {
  const int64_t N = grad.size(0), U = grad.size(1), B = grad.size(2), E = weight.size(1);
  auto gx = torch::zeros({N, inputs, B}, grad.options());
  const float* gp = grad.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* xp = gx.data_ptr<float>();
  Inverse inv{ptr.data_ptr<int32_t>(), flat.data_ptr<int32_t>(), unit.data_ptr<int32_t>()};
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t n = begin; n < end; ++n) {
      const float* w = wp + n * E;
      const int32_t* p = inv.ptr + n * (inputs + 1);
      const int32_t* f = inv.flat + n * E;
      const int32_t* u = inv.unit + n * E;
      for (int64_t i = 0; i < inputs; ++i) {
        float* x = xp + (n * inputs + i) * B;
        for (int32_t e = p[i]; e < p[i + 1]; ++e) {
          const float we = w[f[e]];
          const float* row = gp + (n * U + u[e]) * B;
          for (int64_t b = 0; b < B; ++b) x[b] += we * row[b];
        }
      }
    }
  });
  return gx;
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

void centred_rmsprop_step(torch::Tensor param, torch::Tensor grad, torch::Tensor square_avg,
                          torch::Tensor grad_avg, double lr, double alpha, double eps,
                          c10::optional<torch::Tensor> l1) {
  const int64_t size = param.numel();
  param.unsafeGetTensorImpl()->bump_version();  // an in-place change, as torch's own ops record it
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* sq = square_avg.data_ptr<float>();
  float* mean = grad_avg.data_ptr<float>();
  const float a = alpha, keep = 1.0 - alpha, rate = lr, e = eps;
  const float* coef = l1 ? l1->data_ptr<float>() : nullptr;
  const int64_t block = l1 ? size / l1->numel() : size;  // weights per agent
  at::parallel_for(0, size, 16384, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    if (coef == nullptr) return rmsprop_range<false>(p, g, sq, mean, begin, end, 0.f, a, keep, rate, e);
    for (int64_t i = begin; i < end;) {  // one agent's coefficient per stretch
      const int64_t n = i / block, stop = std::min(end, (n + 1) * block);
      rmsprop_range<true>(p, g, sq, mean, i, stop, coef[n], a, keep, rate, e);
      i = stop;
    }
  });
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
        py::arg("flat"), py::arg("unit"), py::arg("by_input"), py::arg("by_flat"), py::arg("by_unit") = -1);
  m.def("sparse_grad_weight", &sparse_grad_weight);
  m.def("sparse_grad_input", &sparse_grad_input);
  m.def("relu_grad", &relu_grad);
  m.def("breakout_step", &breakout_step);
  m.def("breakout_observe", &breakout_observe);
  m.def("space_invaders_step", &space_invaders_step);
  m.def("space_invaders_observe", &space_invaders_observe);
  m.def("replay_pack", &replay_pack);
  m.def("replay_sample", &replay_sample, py::arg("obs"), py::arg("next_obs"), py::arg("action"), py::arg("reward"),
        py::arg("done"), py::arg("agents"), py::arg("idx"), py::arg("inputs"), py::arg("inputs_major") = false);
  m.def("centred_rmsprop_step", &centred_rmsprop_step, py::arg("param"), py::arg("grad"), py::arg("square_avg"),
        py::arg("grad_avg"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("l1") = py::none());
}
