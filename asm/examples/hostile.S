/* SPDX-License-Identifier: MIT */
/*
 * Hostile kernel-style routines for the README's example of the machine's protections
 * (issue 17, class 11).  None is a copy routine; each breaks one rule a booted kernel
 * enforces.  tests/regress/test_protection_breaches_and_system_instructions_end_the_case.py
 * has many more.
 *
 * Convention: rdi = destination, rsi = source, edx = length, eax = bytes not copied.
 */
#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/smap.h>

/* Patches its own first instruction: kernel text is read-only. */
SYM_FUNC_START(write_own_text)
	movb $0x90, write_own_text(%rip)
	xorl %eax, %eax
	RET
SYM_FUNC_END(write_own_text)

/* The same write at an instruction with an __ex_table entry: fixed up like any #PF
 * (returns the length, "nothing copied"). */
SYM_FUNC_START(write_own_text_fixed)
	leaq write_own_text_fixed(%rip), %rcx
1:	movb $0x90, (%rcx)
	xorl %eax, %eax
	RET
2:	movl %edx, %eax
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(write_own_text_fixed)

/* Plants a ret in the user buffer (copy to user: rdi) and calls it: with SMEP the CPU
 * refuses to run a user page in kernel mode; without, it runs it. */
SYM_FUNC_START(ret2usr)
	ASM_STAC
	movb $0xc3, (%rdi)
	ASM_CLAC
	call *%rdi
	xorl %eax, %eax
	RET
SYM_FUNC_END(ret2usr)

/* Writes an MSR: legal in kernel mode, never in a copy routine. */
SYM_FUNC_START(set_msr)
	movl $0xc0000080, %ecx
	xorl %eax, %eax
	xorl %edx, %edx
	wrmsr
	RET
SYM_FUNC_END(set_msr)
