// Kernels compiled for x86-64-v4 (AVX-512); CMake adds -march=x86-64-v4 to this file only.
#if defined(SOLAR_CPU_X86)
#define SOLAR_ISA isa_avx512
#define SOLAR_ISA_NAME "avx512"
#define SOLAR_VW 16
#define SOLAR_MR 8
#define SOLAR_NV 2
#include "isa/table.h"
#endif
