// Picks the ISA build of the CPU kernels once, from what the running CPU supports.
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"
#include "ops.h"

namespace solar {
namespace cpu {

namespace isa_generic { const Kernels& table(); }
#if defined(SOLAR_CPU_X86)
namespace isa_avx2 { const Kernels& table(); }
namespace isa_avx512 { const Kernels& table(); }
#endif

// The ISA builds this CPU can run, best first.
std::vector<const Kernels*> runnable_isas() {
  std::vector<const Kernels*> out;
#if defined(SOLAR_CPU_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    out.push_back(&isa_avx512::table());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    out.push_back(&isa_avx2::table());
#endif
  out.push_back(&isa_generic::table());
  return out;
}

static const Kernels* g_active = nullptr;

const Kernels& kernels() {
  if (!g_active) g_active = runnable_isas().front();
  return *g_active;
}

// Selects an ISA build by name ("auto" for the best); returns false if it cannot run here.
bool select_isa(const char* name) {
  auto all = runnable_isas();
  if (std::strcmp(name, "auto") == 0) {
    g_active = all.front();
    return true;
  }
  for (const Kernels* k : all)
    if (std::strcmp(k->isa, name) == 0) {
      g_active = k;
      return true;
    }
  return false;
}

static int g_threads = 0;

int num_threads() {
#ifdef _OPENMP
  return g_threads > 0 ? g_threads : omp_get_max_threads();
#else
  return 1;
#endif
}
void set_num_threads(int n) { g_threads = n; }

// Measured on a 2-core EPYC: a parallel region costs ~5-20 us idle, much more under load.
constexpr double kMinWorkPerThread = 1 << 20;

int threads_for(double work) {
  const int n = num_threads();
  const double useful = work / kMinWorkPerThread;
  return useful >= n ? n : (useful < 1.0 ? 1 : static_cast<int>(useful));
}

void masked_pool_forward(PoolArgs a) {
  a.nthreads = threads_for(static_cast<double>(a.B) * a.L * a.D);
  std::vector<float> scratch(static_cast<std::size_t>(a.nthreads) * a.D);
  a.scratch = scratch.data();
  kernels().pool_fwd(a);
}

void masked_pool_backward(PoolArgs a) {
  a.nthreads = threads_for(2.0 * a.B * a.L * a.D);
  std::vector<float> scratch(static_cast<std::size_t>(a.nthreads) * a.D);
  a.scratch = scratch.data();
  kernels().pool_bwd(a);
}

}  // namespace cpu
}  // namespace solar
