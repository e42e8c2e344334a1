/* SPDX-License-Identifier: MIT */
/*
 * emu era F: v6.4 and later, rep_movs_alternative without a tail handler.
 *
 * Written for emu from kernel-facts.md (sections 3, 4 and 11); not kernel text.
 *
 * Stands for:   v6.4 -> today, in the 6.6+ form that copies large blocks with rep movsq
 *               (before the 2025 aligned-destination change 3f7176e19a0f).  Reproduces
 *               the x86-rep-insns series (adfcf4231b8c, 3639a535587d, 577e6a7fd50d,
 *               427fda2c8a49, 034ff37d3407), the ERMS path of 47ee3f1dd93b and
 *               .Llarge_movsq of ca96b162bfd2.
 * Extable:      _ASM_EXTABLE_UA everywhere (EX_TYPE_UACCESS: IP to the fixup, eax NOT
 *               written, so the code cannot tell a machine check from a page fault).
 * Result:       rcx = bytes not copied (no longer eax); rax is scratch.
 *
 * #PF: rcx = exact remaining count on every path.  The byte loop stops at the faulting
 *      byte.  The word loop and rep movsq fall back to the byte loop, which retries from
 *      the start of the failing qword and stops exactly at the fault.  rep movsb (ERMS
 *      .Llarge, or the FSRM instruction in copy_user_generic) stops exactly and returns
 *      without any retry.
 * #MC: handled exactly like #PF (recoverable as UACCESS + copy-from-user decoding).
 *      rcx = exact remaining count.  On the word and rep movsq paths the byte-loop
 *      retry reads the poisoned line a second time (second, recoverable #MC); on the
 *      rep movsb paths and in the byte loop there is no retry.  No SIGBUS.
 *
 * copy_user_generic below is NOT a kernel assembly function: from v6.4 the kernel
 * inlines this sequence from C (copy_user_generic() in uaccess_64.h).  emu needs a
 * callable entry point, so the stub reproduces what the inlined code does.
 */

#include <linux/linkage.h>
#include <asm/cpufeatures.h>
#include <asm/alternative.h>
#include <asm/asm.h>
#include <asm/smap.h>
#include <asm/export.h>
#include <asm/trapnr.h>

/*
 * rep_movs_alternative: rdi = destination, rsi = source, rcx = byte count.
 * Returns rcx = bytes left uncopied (0 on success); clobbers rax.  The
 * caller has already opened the user-access window (stac) and closes it.
 */
SYM_FUNC_START(rep_movs_alternative)
	cmpq $64,%rcx
	jae .Llarge			/* 64 bytes or more */
	cmp $8,%ecx
	jae .Lword			/* 8..63 bytes */
	testl %ecx,%ecx
	jz .Lexit			/* nothing at all */

	/*
	 * Byte loop.  Also where every fault in the word and movsq paths
	 * ends up: rsi/rdi/rcx then describe the start of the failing word,
	 * and this loop gets as far as it can, one byte at a time.
	 */
.Lcopy_user_tail:
0:	movb (%rsi),%al
1:	movb %al,(%rdi)
	incq %rsi
	incq %rdi
	decq %rcx
	jnz .Lcopy_user_tail
.Lexit:
	RET				/* rcx = 0, or the count at the fault */

	_ASM_EXTABLE_UA(0b, .Lexit)
	_ASM_EXTABLE_UA(1b, .Lexit)

	/* 8-byte words while at least 8 bytes remain, then the byte loop. */
	.p2align 4
.Lword:
2:	movq (%rsi),%rax
3:	movq %rax,(%rdi)
	addq $8,%rsi
	addq $8,%rdi
	subl $8,%ecx			/* count stays below 64 here */
	jz .Lexit
	cmp $8,%ecx
	jae .Lword
	jmp .Lcopy_user_tail

	/* A fault leaves rcx counting the failing word: retry it byte-wise. */
	_ASM_EXTABLE_UA(2b, .Lcopy_user_tail)
	_ASM_EXTABLE_UA(3b, .Lcopy_user_tail)

	/*
	 * Large copies: with ERMS a single rep movsb, which stops exactly
	 * where it faulted and returns from there.  Without it, rep movsq.
	 */
.Llarge:
0:	ALTERNATIVE "jmp .Llarge_movsq", "rep movsb", X86_FEATURE_ERMS
1:	RET

	_ASM_EXTABLE_UA(0b, 1b)

.Llarge_movsq:
	movq %rcx,%rax
	andl $7,%eax			/* eax = bytes after the last whole word */
	shrq $3,%rcx			/* rcx = whole words */
0:	rep movsq
	movl %eax,%ecx			/* words done; the odd bytes are left */
	testl %ecx,%ecx
	jnz .Lcopy_user_tail
	RET

	/* rcx words not moved (the failing one included), plus the odd bytes. */
1:	leaq (%rax,%rcx,8),%rcx
	jmp .Lcopy_user_tail

	_ASM_EXTABLE_UA(0b, 1b)
SYM_FUNC_END(rep_movs_alternative)
EXPORT_SYMBOL(rep_movs_alternative)

/*
 * copy_user_generic: stand-in for the v6.4+ inline C copy_user_generic().
 * Same registers as rep_movs_alternative (rdi, rsi, rcx in; rcx out), but
 * it opens and closes the user-access window itself.  With FSRM the copy
 * is one rep movsb in line; otherwise rep_movs_alternative is called.  One
 * extable entry covers either instruction and resumes after it.
 */
SYM_FUNC_START(copy_user_generic)
	ASM_STAC
1:	ALTERNATIVE "call rep_movs_alternative", "rep movsb", X86_FEATURE_FSRM
2:	ASM_CLAC
	RET

	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(copy_user_generic)
EXPORT_SYMBOL(copy_user_generic)
