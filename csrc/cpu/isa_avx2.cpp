// Kernels compiled for x86-64-v3 (AVX2 + FMA); CMake adds -march=x86-64-v3 to this file only.
#if defined(SOLAR_CPU_X86)
#define SOLAR_ISA isa_avx2
#define SOLAR_ISA_NAME "avx2"
#define SOLAR_VW 8
#define SOLAR_MR 6
#define SOLAR_NV 2
#include "isa/table.h"
#endif
