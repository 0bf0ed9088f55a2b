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
#include <cmath>
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
  int count = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (column[b] != 0.f) {
      if (count == kFew) return kMany;
      at[count++] = int32_t(b);
    }
  }
  return count;
}

// Work items: agents, each cut into `parts` pieces when there are fewer agents than threads, so
// that a population of one still uses every core.
static int64_t parts_per_agent(int64_t N) {
  const int64_t threads = at::get_num_threads();
  return N >= threads ? 1 : (threads + N - 1) / N;
}

// xt (N, D, B), weight (N, U * K), bias (N, U) -> relu(pre-activation + bias), (N, U, B).
// Pieces of an agent are ranges of the batch's lanes: they write disjoint columns.
torch::Tensor sparse_forward(torch::Tensor xt, torch::Tensor weight, torch::Tensor bias, torch::Tensor ptr,
                             torch::Tensor flat, torch::Tensor unit) {
  const int64_t N = xt.size(0), D = xt.size(1), B = xt.size(2), E = weight.size(1), U = bias.size(1);
  auto out = torch::empty({N, U, B}, xt.options());
  const float* xp = xt.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  Inverse inv{ptr.data_ptr<int32_t>(), flat.data_ptr<int32_t>(), unit.data_ptr<int32_t>()};
  const int64_t parts = std::min(parts_per_agent(N), B);
  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / parts, part = item % parts;
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
torch::Tensor sparse_grad_weight(torch::Tensor grad, torch::Tensor xt, torch::Tensor ptr,
                                 torch::Tensor flat, torch::Tensor unit, int64_t entries) {
  const int64_t N = xt.size(0), D = xt.size(1), B = xt.size(2), U = grad.size(1);
  auto gw = torch::zeros({N, entries}, xt.options());
  const float* xp = xt.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  float* wp = gw.data_ptr<float>();
  Inverse inv{ptr.data_ptr<int32_t>(), flat.data_ptr<int32_t>(), unit.data_ptr<int32_t>()};
  const int64_t parts = std::min(parts_per_agent(N), D);
  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / parts, part = item % parts;
      const int32_t* p = inv.ptr + n * (D + 1);
      const int32_t* f = inv.flat + n * entries;
      const int32_t* u = inv.unit + n * entries;
      const float* g = gp + n * U * B;
      float* w = wp + n * entries;
      int32_t at[kFew];
      for (int64_t i = D * part / parts; i < D * (part + 1) / parts; ++i) {
        const float* x = xp + (n * D + i) * B;
        const int count = few_nonzero(x, B, at);
        if (count == 0) continue;
        for (int32_t e = p[i]; e < p[i + 1]; ++e) {
          const float* row = g + int64_t(u[e]) * B;
          float s = 0.f;
          if (count < kMany) {
            for (int c = 0; c < count; ++c) s += row[at[c]] * x[at[c]];
          } else {
            for (int64_t b = 0; b < B; ++b) s += row[b] * x[b];
          }
          w[f[e]] = s;
        }
      }
    }
  });
  return gw;
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_forward", &sparse_forward);
  m.def("sparse_grad_weight", &sparse_grad_weight);
  m.def("sparse_grad_input", &sparse_grad_input);
  m.def("centred_rmsprop_step", &centred_rmsprop_step, py::arg("param"), py::arg("grad"), py::arg("square_avg"),
        py::arg("grad_avg"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("l1") = py::none());
}
