// Kernels compiled for the baseline ISA of the target (SSE2 on x86-64, NEON on arm64).
#define SOLAR_ISA isa_generic
#define SOLAR_ISA_NAME "generic"
#define SOLAR_VW 4
#define SOLAR_MR 4
#define SOLAR_NV 2
#include "isa/table.h"
