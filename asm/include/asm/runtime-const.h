/* SPDX-License-Identifier: MIT */
/* emu: kernel header name; the vocabulary lives in asm/emu_kernel.h. */
#include <asm/emu_kernel.h>
