/* SPDX-License-Identifier: MIT */
/*
 * emu era D: v5.16, after the revert of the machine-check special case.
 *
 * Written for emu from kernel-facts.md (sections 3, 4 and 11); not kernel text.
 *
 * Stands for:   v5.16 only.  Reproduces mainline 690658471b5f28d306e6492c4585d748cb5304e8
 *               ("x86/mce: Drop copyin special case for #MC", [PATCH v2 3/3]
 *               lore 20210818002942.1607544-4; copy_user_64.S blob
 *               2797e63).  The code of .Lcopy_user_handle_tail is era A's again, but the
 *               entries stay _ASM_EXTABLE_CPY (EX_TYPE_COPY in the v5.16 table format),
 *               and the comment about not copying the tail after a machine check was
 *               left behind although the check itself is gone.
 * Extable:      _ASM_EXTABLE_CPY on every user access and on the tail retry
 *               (EX_TYPE_COPY: IP to the fixup, trap number into eax).
 *
 * #PF: the fixup puts the bytes still to copy in edx and .Lcopy_user_handle_tail
 *      retries them byte by byte from the start of the failed block/qword/byte;
 *      eax = what the retry could not copy, exact to the byte.
 * #MC: recoverable.  eax = 18 is ignored, so the tail IS retried: rep movsb runs
 *      from the start of the failed block/qword/byte and reads the poisoned line
 *      again.  That second machine check is recoverable too (rep movs from a user
 *      source, COPY type) and lands on the instruction after the retry, so
 *      eax = ecx = the bytes from the poison onward: exact.  No SIGBUS.
 *
 * Register convention of all four routines: rdi = destination, rsi = source,
 * edx = byte count; result in eax = bytes that were not copied (0 on success).
 * Every routine opens the user-access window with ASM_STAC and closes it with
 * ASM_CLAC on each way out.
 */

#include <linux/linkage.h>
#include <asm/current.h>
#include <asm/asm-offsets.h>
#include <asm/thread_info.h>
#include <asm/cpufeatures.h>
#include <asm/alternative.h>
#include <asm/asm.h>
#include <asm/smap.h>
#include <asm/export.h>
#include <asm/trapnr.h>

/*
 * Copy single bytes until the destination pointer is a multiple of 8.
 * Used only when at least 8 bytes are to be copied, so it never runs
 * past the end.  ecx counts the alignment bytes still to go; those were
 * already taken off edx, so a fault adds them back before the tail
 * handler sees the total.
 */
.macro ALIGN_DESTINATION
	movl %edi,%ecx
	negl %ecx
	andl $7,%ecx			/* bytes up to the next 8-byte boundary */
	jz 102f
	subl %ecx,%edx
100:	movb (%rsi),%al
101:	movb %al,(%rdi)
	incq %rsi
	incq %rdi
	decl %ecx
	jnz 100b
102:
	.section .fixup,"ax"
103:	addl %ecx,%edx			/* pending alignment bytes + the rest */
	jmp .Lcopy_user_handle_tail
	.previous

	_ASM_EXTABLE_CPY(100b, 103b)
	_ASM_EXTABLE_CPY(101b, 103b)
.endm

/*
 * Plain register copy for CPUs without fast string operations:
 * 64 bytes per pass through r8-r11, then 8-byte words, then bytes.
 */
SYM_FUNC_START(copy_user_generic_unrolled)
	ASM_STAC
	cmpl $8,%edx
	jb .Lunrolled_bytes		/* too short to bother aligning */
	ALIGN_DESTINATION
	movl %edx,%ecx
	shrl $6,%ecx			/* ecx = whole 64-byte blocks */
	andl $63,%edx			/* edx = what is left after them */
	testl %ecx,%ecx
	jz .L_copy_short_string
.Lunrolled_block:
1:	movq 0*8(%rsi),%r8
2:	movq 1*8(%rsi),%r9
3:	movq 2*8(%rsi),%r10
4:	movq 3*8(%rsi),%r11
5:	movq %r8,0*8(%rdi)
6:	movq %r9,1*8(%rdi)
7:	movq %r10,2*8(%rdi)
8:	movq %r11,3*8(%rdi)
9:	movq 4*8(%rsi),%r8
10:	movq 5*8(%rsi),%r9
11:	movq 6*8(%rsi),%r10
12:	movq 7*8(%rsi),%r11
13:	movq %r8,4*8(%rdi)
14:	movq %r9,5*8(%rdi)
15:	movq %r10,6*8(%rdi)
16:	movq %r11,7*8(%rdi)
	leaq 64(%rsi),%rsi		/* pointers move only after the whole block */
	leaq 64(%rdi),%rdi
	decl %ecx
	jnz .Lunrolled_block
	/*
	 * Fewer than 64 bytes left (edx).  The ERMS routine also enters here
	 * for short copies.
	 */
.L_copy_short_string:
	movl %edx,%ecx
	shrl $3,%ecx			/* ecx = whole 8-byte words */
	andl $7,%edx			/* edx = trailing bytes */
	testl %ecx,%ecx
	jz .Lunrolled_bytes
.Lunrolled_word:
18:	movq (%rsi),%r8
19:	movq %r8,(%rdi)
	leaq 8(%rsi),%rsi
	leaq 8(%rdi),%rdi
	decl %ecx
	jnz .Lunrolled_word
.Lunrolled_bytes:
	movl %edx,%ecx			/* ecx = bytes, counted down to zero */
	testl %ecx,%ecx
	jz .Lunrolled_done
.Lunrolled_byte:
21:	movb (%rsi),%al
22:	movb %al,(%rdi)
	incq %rsi
	incq %rdi
	decl %ecx
	jnz .Lunrolled_byte
.Lunrolled_done:
	xorl %eax,%eax
	ASM_CLAC
	ret

	.section .fixup,"ax"
	/* In a block: ecx blocks (the current one included) plus edx. */
30:	shll $6,%ecx
	addl %ecx,%edx
	jmp .Lunrolled_to_tail
	/* In the word loop: ecx words (the current one included) plus edx. */
40:	leal (%rdx,%rcx,8),%edx
	jmp .Lunrolled_to_tail
	/* In the byte loop: ecx is the exact number of bytes left. */
50:	movl %ecx,%edx
.Lunrolled_to_tail:
	jmp .Lcopy_user_handle_tail
	.previous

	_ASM_EXTABLE_CPY(1b, 30b)
	_ASM_EXTABLE_CPY(2b, 30b)
	_ASM_EXTABLE_CPY(3b, 30b)
	_ASM_EXTABLE_CPY(4b, 30b)
	_ASM_EXTABLE_CPY(5b, 30b)
	_ASM_EXTABLE_CPY(6b, 30b)
	_ASM_EXTABLE_CPY(7b, 30b)
	_ASM_EXTABLE_CPY(8b, 30b)
	_ASM_EXTABLE_CPY(9b, 30b)
	_ASM_EXTABLE_CPY(10b, 30b)
	_ASM_EXTABLE_CPY(11b, 30b)
	_ASM_EXTABLE_CPY(12b, 30b)
	_ASM_EXTABLE_CPY(13b, 30b)
	_ASM_EXTABLE_CPY(14b, 30b)
	_ASM_EXTABLE_CPY(15b, 30b)
	_ASM_EXTABLE_CPY(16b, 30b)
	_ASM_EXTABLE_CPY(18b, 40b)
	_ASM_EXTABLE_CPY(19b, 40b)
	_ASM_EXTABLE_CPY(21b, 50b)
	_ASM_EXTABLE_CPY(22b, 50b)
SYM_FUNC_END(copy_user_generic_unrolled)
EXPORT_SYMBOL(copy_user_generic_unrolled)

/*
 * For CPUs with good rep movsq (X86_FEATURE_REP_GOOD): align the
 * destination, move whole words with rep movsq and the rest with rep movsb.
 */
SYM_FUNC_START(copy_user_generic_string)
	ASM_STAC
	cmpl $8,%edx
	jb .Lstring_bytes		/* short: everything goes through rep movsb */
	ALIGN_DESTINATION
	movl %edx,%ecx
	shrl $3,%ecx			/* ecx = words */
	andl $7,%edx			/* edx = trailing bytes */
1:	rep movsq
.Lstring_bytes:
	movl %edx,%ecx
3:	rep movsb
	xorl %eax,%eax
	ASM_CLAC
	ret

	.section .fixup,"ax"
	/* rcx words were not moved, plus the edx trailing bytes. */
11:	leal (%rdx,%rcx,8),%ecx
	/* rcx bytes were not moved. */
12:	movl %ecx,%edx
	jmp .Lcopy_user_handle_tail
	.previous

	_ASM_EXTABLE_CPY(1b, 11b)
	_ASM_EXTABLE_CPY(3b, 12b)
SYM_FUNC_END(copy_user_generic_string)
EXPORT_SYMBOL(copy_user_generic_string)

/*
 * For CPUs with enhanced rep movsb (X86_FEATURE_ERMS): one rep movsb for
 * 64 bytes or more; shorter copies use the word/byte loops above.
 */
SYM_FUNC_START(copy_user_enhanced_fast_string)
	ASM_STAC
	cmpl $64,%edx
	jb .L_copy_short_string		/* not worth the rep start-up cost */
	movl %edx,%ecx
1:	rep movsb
	xorl %eax,%eax
	ASM_CLAC
	ret

	.section .fixup,"ax"
	/* rcx is exactly what rep movsb had left. */
12:	movl %ecx,%edx
	jmp .Lcopy_user_handle_tail
	.previous

	_ASM_EXTABLE_CPY(1b, 12b)
SYM_FUNC_END(copy_user_enhanced_fast_string)
EXPORT_SYMBOL(copy_user_enhanced_fast_string)

/*
 * Common fault path.  On entry edx = bytes the routine did not get to,
 * and rsi/rdi point at the first of them.  Retry those one byte at a time;
 * whatever rep movsb still has in ecx when it stops (0, or the count at a
 * second fault) is the result.
 *
 * The tail should not be copied again when a machine check brought us
 * here.  (Left over from the previous version: nothing below looks at
 * the trap number any more.)
 */
SYM_CODE_START_LOCAL(.Lcopy_user_handle_tail)
	movl %edx,%ecx
1:	rep movsb
2:	mov %ecx,%eax
	ASM_CLAC
	ret

	_ASM_EXTABLE_CPY(1b, 2b)
SYM_CODE_END(.Lcopy_user_handle_tail)

/*
 * Non-temporal variant: cached loads, movnti stores for everything that
 * can be done in 8- or 4-byte units, ordinary byte stores for the rest,
 * and an sfence before returning (also on the fault path).
 */
SYM_FUNC_START(__copy_user_nocache)
	ASM_STAC
	cmpl $8,%edx
	jb .Lnocache_4b_entry		/* too short to bother aligning */
	ALIGN_DESTINATION

	movl %edx,%ecx
	shrl $6,%ecx			/* ecx = 64-byte blocks */
	andl $63,%edx			/* edx = the rest */
	testl %ecx,%ecx
	jz .Lnocache_8b_entry
.Lnocache_4x8b_loop:
1:	movq 0*8(%rsi),%r8
2:	movq 1*8(%rsi),%r9
3:	movq 2*8(%rsi),%r10
4:	movq 3*8(%rsi),%r11
5:	movnti %r8,0*8(%rdi)
6:	movnti %r9,1*8(%rdi)
7:	movnti %r10,2*8(%rdi)
8:	movnti %r11,3*8(%rdi)
9:	movq 4*8(%rsi),%r8
10:	movq 5*8(%rsi),%r9
11:	movq 6*8(%rsi),%r10
12:	movq 7*8(%rsi),%r11
13:	movnti %r8,4*8(%rdi)
14:	movnti %r9,5*8(%rdi)
15:	movnti %r10,6*8(%rdi)
16:	movnti %r11,7*8(%rdi)
	leaq 64(%rsi),%rsi
	leaq 64(%rdi),%rdi
	decl %ecx
	jnz .Lnocache_4x8b_loop

.Lnocache_8b_entry:
	movl %edx,%ecx
	shrl $3,%ecx			/* ecx = 8-byte words */
	andl $7,%edx			/* edx = fewer than 8 bytes */
	testl %ecx,%ecx
	jz .Lnocache_4b_entry
.Lnocache_8b_loop:
20:	movq (%rsi),%r8
21:	movnti %r8,(%rdi)
	leaq 8(%rsi),%rsi
	leaq 8(%rdi),%rdi
	decl %ecx
	jnz .Lnocache_8b_loop

.Lnocache_4b_entry:
	testl %edx,%edx
	jz .Lnocache_done
	testl $3,%edi			/* movnti of 4 bytes only to a 4-aligned dst */
	jnz .Lnocache_1b_entry
	movl %edx,%ecx
	shrl $2,%ecx			/* ecx = 0 or 1 four-byte unit */
	andl $3,%edx			/* edx = bytes after it */
	testl %ecx,%ecx
	jz .Lnocache_1b_entry
30:	movl (%rsi),%r8d
31:	movnti %r8d,(%rdi)
	leaq 4(%rsi),%rsi
	leaq 4(%rdi),%rdi
	testl %edx,%edx
	jz .Lnocache_done

.Lnocache_1b_entry:
	movl %edx,%ecx			/* byte loop counts down in ecx */
.Lnocache_1b_loop:
40:	movb (%rsi),%al
41:	movb %al,(%rdi)
	incq %rsi
	incq %rdi
	decl %ecx
	jnz .Lnocache_1b_loop

.Lnocache_done:
	xorl %eax,%eax
	ASM_CLAC
	sfence
	ret

	.section .fixup,"ax"
.Lnocache_fixup_4x8b:			/* ecx blocks left, current one included */
	shll $6,%ecx
	addl %ecx,%edx
	jmp .Lnocache_fixup_tail
.Lnocache_fixup_8b:			/* ecx words left, current one included */
	lea (%rdx,%rcx,8),%rdx
	jmp .Lnocache_fixup_tail
.Lnocache_fixup_4b:			/* the 4-byte unit (ecx = 1) plus edx */
	lea (%rdx,%rcx,4),%rdx
	jmp .Lnocache_fixup_tail
.Lnocache_fixup_1b:			/* ecx bytes left, exact */
	movl %ecx,%edx
.Lnocache_fixup_tail:
	sfence				/* order the movnti stores already done */
	jmp .Lcopy_user_handle_tail
	.previous

	_ASM_EXTABLE_CPY(1b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(2b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(3b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(4b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(5b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(6b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(7b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(8b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(9b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(10b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(11b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(12b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(13b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(14b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(15b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(16b, .Lnocache_fixup_4x8b)
	_ASM_EXTABLE_CPY(20b, .Lnocache_fixup_8b)
	_ASM_EXTABLE_CPY(21b, .Lnocache_fixup_8b)
	_ASM_EXTABLE_CPY(30b, .Lnocache_fixup_4b)
	_ASM_EXTABLE_CPY(31b, .Lnocache_fixup_4b)
	_ASM_EXTABLE_CPY(40b, .Lnocache_fixup_1b)
	_ASM_EXTABLE_CPY(41b, .Lnocache_fixup_1b)
SYM_FUNC_END(__copy_user_nocache)
EXPORT_SYMBOL(__copy_user_nocache)
