/* SPDX-License-Identifier: MIT */
/*
 * Small kernel-style routines written for emu's own tests and README examples.
 * They are not any kernel version: each one isolates one mechanism (a rep string
 * stopped mid-way, a fixup redirect, a missing entry, a loop that never ends, a user
 * access without STAC) so the machine's semantics can be pinned down.
 *
 * Convention for all of them: rdi = destination, rsi = source, edx = length,
 * eax = bytes not copied on return.  Assemble with any EMU_EXTABLE_ABI.
 */
#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/smap.h>
#include <asm/trapnr.h>

/*
 * demo_unrolled_copy: 64-byte blocks (eight qword loads, then eight stores), then a
 * byte loop.  A fault anywhere in a block reports the whole block as not copied;
 * a fault in the byte loop is exact.  No tail retry.
 */
SYM_FUNC_START(demo_unrolled_copy)
	ASM_STAC
	movl %edx,%ecx
	shrl $6,%ecx
	andl $63,%edx
	testl %ecx,%ecx
	jz .Ldemo_bytes
.Ldemo_block:
10:	movq 0*8(%rsi),%r8
11:	movq 1*8(%rsi),%r9
12:	movq 2*8(%rsi),%r10
13:	movq 3*8(%rsi),%r11
14:	movq 4*8(%rsi),%rax
15:	movq 5*8(%rsi),%rbx
16:	movq 6*8(%rsi),%rbp
17:	movq 7*8(%rsi),%r12
20:	movq %r8,0*8(%rdi)
21:	movq %r9,1*8(%rdi)
22:	movq %r10,2*8(%rdi)
23:	movq %r11,3*8(%rdi)
24:	movq %rax,4*8(%rdi)
25:	movq %rbx,5*8(%rdi)
26:	movq %rbp,6*8(%rdi)
27:	movq %r12,7*8(%rdi)
	addq $64,%rsi
	addq $64,%rdi
	decl %ecx
	jnz .Ldemo_block
.Ldemo_bytes:
	movl %edx,%ecx
	testl %ecx,%ecx
	jz .Ldemo_done
30:	movb (%rsi),%al
31:	movb %al,(%rdi)
	incq %rsi
	incq %rdi
	decl %ecx
	jnz 30b
.Ldemo_done:
	xorl %eax,%eax
	ASM_CLAC
	RET
	/* block fault: ecx blocks (including this one) plus the edx tail are left */
40:	shll $6,%ecx
	leal (%rcx,%rdx),%eax
	ASM_CLAC
	RET
	/* byte fault: exact */
41:	movl %ecx,%eax
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(10b, 40b)
	_ASM_EXTABLE_UA(11b, 40b)
	_ASM_EXTABLE_UA(12b, 40b)
	_ASM_EXTABLE_UA(13b, 40b)
	_ASM_EXTABLE_UA(14b, 40b)
	_ASM_EXTABLE_UA(15b, 40b)
	_ASM_EXTABLE_UA(16b, 40b)
	_ASM_EXTABLE_UA(17b, 40b)
	_ASM_EXTABLE_UA(20b, 40b)
	_ASM_EXTABLE_UA(21b, 40b)
	_ASM_EXTABLE_UA(22b, 40b)
	_ASM_EXTABLE_UA(23b, 40b)
	_ASM_EXTABLE_UA(24b, 40b)
	_ASM_EXTABLE_UA(25b, 40b)
	_ASM_EXTABLE_UA(26b, 40b)
	_ASM_EXTABLE_UA(27b, 40b)
	_ASM_EXTABLE_UA(30b, 41b)
	_ASM_EXTABLE_UA(31b, 41b)
SYM_FUNC_END(demo_unrolled_copy)

/* demo_movsb: one rep movsb; the fixup returns the exact remaining count in ecx. */
SYM_FUNC_START(demo_movsb)
	ASM_STAC
	movl %edx,%ecx
1:	rep movsb
	xorl %eax,%eax
	ASM_CLAC
	RET
2:	movl %ecx,%eax
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(demo_movsb)

/* demo_movsq: rep movsq of len/8 qwords then rep movsb of len%8; fixups count back. */
SYM_FUNC_START(demo_movsq)
	ASM_STAC
	movl %edx,%ecx
	shrl $3,%ecx
	andl $7,%edx
1:	rep movsq
	movl %edx,%ecx
2:	rep movsb
	xorl %eax,%eax
	ASM_CLAC
	RET
3:	leal (%rdx,%rcx,8),%eax
	ASM_CLAC
	RET
4:	movl %ecx,%eax
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 3b)
	_ASM_EXTABLE_UA(2b, 4b)
SYM_FUNC_END(demo_movsq)

/* demo_trapnr: like demo_movsb but the entry is a FAULT-type one that writes the trap number. */
SYM_FUNC_START(demo_trapnr)
	ASM_STAC
	movl %edx,%ecx
1:	rep movsb
	xorl %eax,%eax
2:	ASM_CLAC
	RET
	_ASM_EXTABLE_FAULT(1b, 2b)
SYM_FUNC_END(demo_trapnr)

/* demo_no_entry: a user load with no exception-table entry at all. */
SYM_FUNC_START(demo_no_entry)
	ASM_STAC
	movl %edx,%ecx
	rep movsb
	xorl %eax,%eax
	ASM_CLAC
	RET
SYM_FUNC_END(demo_no_entry)

/* demo_no_stac: copies without opening the user-access window. */
SYM_FUNC_START(demo_no_stac)
	movl %edx,%ecx
1:	rep movsb
	xorl %eax,%eax
	RET
2:	movl %ecx,%eax
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(demo_no_stac)

/* demo_runaway: never returns. */
SYM_FUNC_START(demo_runaway)
1:	pause
	jmp 1b
SYM_FUNC_END(demo_runaway)

/* demo_refault: the fixup jumps back to the faulting load, forever. */
SYM_FUNC_START(demo_refault)
	ASM_STAC
1:	movb (%rsi),%al
	xorl %eax,%eax
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 1b)
SYM_FUNC_END(demo_refault)

/* demo_store_src: stores zeros over the *source* buffer; loads nothing from it. */
SYM_FUNC_START(demo_store_src)
	ASM_STAC
	movl %edx,%ecx
	xorl %eax,%eax
1:	movb %al,(%rsi)
	incq %rsi
	decl %ecx
	jnz 1b
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 1b)
SYM_FUNC_END(demo_store_src)

/* demo_straddle: one 8-byte load from src+0 (callers misalign src to straddle a line). */
SYM_FUNC_START(demo_straddle)
	ASM_STAC
	movq $0x1111111111111111,%r8
1:	movq (%rsi),%r8
	movq %r8,(%rdi)
	xorl %eax,%eax
	ASM_CLAC
	RET
2:	movl $8,%eax
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(demo_straddle)
