/* SPDX-License-Identifier: MIT */
/*
 * emu's kernel-macro vocabulary for x86-64 assembly sources.
 *
 * Written for the emu project from the facts in kernel-facts.md (sections 4 and 5);
 * no kernel header text is reproduced here.  Kernel .S files and the project's own
 * era sources include the usual kernel header names (<linux/linkage.h>, <asm/asm.h>,
 * <asm/smap.h>, ...); every one of those names is a thin file in this directory that
 * includes this one, so the whole vocabulary is defined in one place.
 *
 * The assembler stage (emu/assemble.py) selects the era and the CPU with -D flags:
 *
 *   EMU_EXTABLE_ABI   1  three relative words, the third points at a handler
 *                        function (ex_handler_*)                    up to v5.15
 *                     2  third word is an absolute EX_TYPE_* number  v5.16
 *                     3  third word is data: type 0-7, reg 8-11, flags 12-15,
 *                        signed imm 16-31                           v5.17 and later
 *   EMU_EX_LAYOUT     516 / 517 / 610: which EX_TYPE_* numbering (kernel-facts 5b)
 *   EMU_CPU_REP_GOOD, EMU_CPU_ERMS, EMU_CPU_FSRM, EMU_CPU_SMAP   0 or 1
 *
 * ALTERNATIVE sites are resolved at assembly time: the instruction the kernel would
 * have patched in for the selected CPU is assembled in place, so extable entries that
 * name a label in front of an ALTERNATIVE cover whichever instruction was chosen.
 */
#ifndef EMU_KERNEL_H
#define EMU_KERNEL_H

#ifndef __ASSEMBLY__
#define __ASSEMBLY__ 1
#endif

#ifndef EMU_EXTABLE_ABI
#define EMU_EXTABLE_ABI 3
#endif
#ifndef EMU_EX_LAYOUT
#define EMU_EX_LAYOUT 517
#endif
#ifndef EMU_CPU_REP_GOOD
#define EMU_CPU_REP_GOOD 0
#endif
#ifndef EMU_CPU_ERMS
#define EMU_CPU_ERMS 0
#endif
#ifndef EMU_CPU_FSRM
#define EMU_CPU_FSRM 0
#endif
#ifndef EMU_CPU_SMAP
#define EMU_CPU_SMAP 1
#endif

/* The kernel configuration emu models: x86-64 with machine-check support (copy_mc_fragile). */
#ifndef CONFIG_X86_MCE
#define CONFIG_X86_MCE 1
#endif

/* ---- generic helpers ------------------------------------------------------------ */

#define __stringify_1(x...)	#x
#define __stringify(x...)	__stringify_1(x)
#define _AC(X, Y)		X
#define _AT(T, X)		X
#define _UL(x)			x
#define _ULL(x)			x
#define BIT(nr)			(1 << (nr))
#define __ALIGN		.p2align 4, 0x90
#define __ALIGN_STR	".p2align 4, 0x90"
#define ALIGN		__ALIGN
#define ASM_NL		;
#define _ASM_PTR	.quad
#define _ASM_ALIGN	.balign 8
#define __ASM_SEL(a, b)	b
#define __ASM_FORM(x, ...)	x
/* In assembly the kernel's _ASM_<reg> names are bare register names: sources write %_ASM_AX. */
#define _ASM_AX		rax
#define _ASM_BX		rbx
#define _ASM_CX		rcx
#define _ASM_DX		rdx
#define _ASM_SP		rsp
#define _ASM_BP		rbp
#define _ASM_SI		rsi
#define _ASM_DI		rdi
#define _ASM_ARG1	rdi
#define _ASM_ARG2	rsi
#define _ASM_ARG3	rdx
#define _ASM_ARG4	rcx
#define _ASM_ARG5	r8
#define _ASM_ARG6	r9

/* ---- symbols (linux/linkage.h) -------------------------------------------------- */

#define SYM_L_GLOBAL(name)	.globl name
#define SYM_L_WEAK(name)	.weak name
#define SYM_L_LOCAL(name)	/* local */
#define SYM_T_FUNC		STT_FUNC
#define SYM_T_OBJECT		STT_OBJECT
#define SYM_T_NONE		STT_NOTYPE
#define SYM_A_ALIGN		ALIGN
#define SYM_A_NONE		/* none */

#define SYM_ENTRY(name, linkage, align...)	linkage(name) ASM_NL align ASM_NL name:
#define SYM_START(name, linkage, align...)	SYM_ENTRY(name, linkage, align)
#define SYM_END(name, sym_type)	.type name, sym_type ASM_NL .set .L__sym_size_##name, .-name ASM_NL .size name, .L__sym_size_##name

#define SYM_FUNC_START(name)		SYM_START(name, SYM_L_GLOBAL, SYM_A_ALIGN)
#define SYM_FUNC_START_NOALIGN(name)	SYM_START(name, SYM_L_GLOBAL, SYM_A_NONE)
#define SYM_FUNC_START_LOCAL(name)	SYM_START(name, SYM_L_LOCAL, SYM_A_ALIGN)
#define SYM_FUNC_START_LOCAL_NOALIGN(name)	SYM_START(name, SYM_L_LOCAL, SYM_A_NONE)
#define SYM_FUNC_START_WEAK(name)	SYM_START(name, SYM_L_WEAK, SYM_A_ALIGN)
#define SYM_FUNC_START_WEAK_NOALIGN(name)	SYM_START(name, SYM_L_WEAK, SYM_A_NONE)
#define SYM_TYPED_FUNC_START(name)	SYM_FUNC_START(name)
#define SYM_FUNC_END(name)		SYM_END(name, SYM_T_FUNC)
#define SYM_FUNC_START_ALIAS(name)	SYM_START(name, SYM_L_GLOBAL, SYM_A_NONE)
#define SYM_FUNC_START_LOCAL_ALIAS(name)	SYM_START(name, SYM_L_LOCAL, SYM_A_NONE)
#define SYM_FUNC_END_ALIAS(name)	SYM_END(name, SYM_T_FUNC)
#define SYM_FUNC_ALIAS(alias, name)	.globl alias ASM_NL .set alias, name
#define SYM_FUNC_ALIAS_LOCAL(alias, name)	.set alias, name
#define SYM_FUNC_ALIAS_WEAK(alias, name)	.weak alias ASM_NL .set alias, name
#define SYM_FUNC_ALIAS_MEMFUNC(alias, name)	SYM_FUNC_ALIAS(alias, name)
#define SYM_CODE_START(name)		SYM_START(name, SYM_L_GLOBAL, SYM_A_ALIGN)
#define SYM_CODE_START_NOALIGN(name)	SYM_START(name, SYM_L_GLOBAL, SYM_A_NONE)
#define SYM_CODE_START_LOCAL(name)	SYM_START(name, SYM_L_LOCAL, SYM_A_ALIGN)
#define SYM_CODE_START_LOCAL_NOALIGN(name)	SYM_START(name, SYM_L_LOCAL, SYM_A_NONE)
#define SYM_CODE_END(name)		SYM_END(name, SYM_T_NONE)
#define SYM_INNER_LABEL(name, linkage)	.type name, SYM_T_NONE ASM_NL linkage(name) ASM_NL name:
#define SYM_INNER_LABEL_ALIGN(name, linkage)	.type name, SYM_T_NONE ASM_NL ALIGN ASM_NL linkage(name) ASM_NL name:
#define SYM_DATA_START(name)		SYM_START(name, SYM_L_GLOBAL, SYM_A_NONE)
#define SYM_DATA_START_LOCAL(name)	SYM_START(name, SYM_L_LOCAL, SYM_A_NONE)
#define SYM_DATA_END(name)		SYM_END(name, SYM_T_OBJECT)
#define SYM_DATA(name, data...)		SYM_DATA_START(name) ASM_NL data ASM_NL SYM_DATA_END(name)
#define SYM_DATA_LOCAL(name, data...)	SYM_DATA_START_LOCAL(name) ASM_NL data ASM_NL SYM_DATA_END(name)

/* Pre-5.5 spellings. */
#define ENTRY(name)	SYM_FUNC_START(name)
#define END(name)	.size name, .-name
#define ENDPROC(name)	SYM_FUNC_END(name)
#define GLOBAL(name)	.globl name ASM_NL name:

/* ---- exports, annotations and hints: no effect on the emulated code ------------- */

#define EXPORT_SYMBOL(sym)
#define EXPORT_SYMBOL_GPL(sym)
#define EXPORT_SYMBOL_NS(sym, ns)
#define EXPORT_SYMBOL_NS_GPL(sym, ns)
#define _ASM_NOKPROBE(entry)
#define ANNOTATE_NOENDBR
#define ANNOTATE_RETPOLINE_SAFE
#define ANNOTATE_UNRET_SAFE
#define ANNOTATE_UNRET_END
#define ANNOTATE_INTRA_FUNCTION_CALL
#define ANNOTATE_NOSPEC_ALTERNATIVE
#define ANNOTATE_IGNORE_ALTERNATIVE
#define ANNOTATE_NOINSTR
#define STACK_FRAME_NON_STANDARD(func)
#define ENDBR
#define FRAME_BEGIN
#define FRAME_END
#define UNWIND_HINT_EMPTY
#define UNWIND_HINT_UNDEFINED
#define UNWIND_HINT_FUNC
#define UNWIND_HINT_RET_OFFSET
#define UNWIND_HINT_END_OF_STACK
#define UNWIND_HINT_REGS
#define UNWIND_HINT_IRET_REGS
#define CALL_DEPTH_ACCOUNT
#define VALIDATE_UNRET_BEGIN
#define VALIDATE_UNRET_END

/* Returns: no return thunks, no straight-line-speculation padding. */
#define RET		ret
#define ASM_RET		ret
#define RETGUARD	ret

/* ---- trap numbers (asm/trapnr.h) ------------------------------------------------ */

#define X86_TRAP_DE	0
#define X86_TRAP_DB	1
#define X86_TRAP_NMI	2
#define X86_TRAP_BP	3
#define X86_TRAP_OF	4
#define X86_TRAP_BR	5
#define X86_TRAP_UD	6
#define X86_TRAP_NM	7
#define X86_TRAP_DF	8
#define X86_TRAP_OLD_MF	9
#define X86_TRAP_TS	10
#define X86_TRAP_NP	11
#define X86_TRAP_SS	12
#define X86_TRAP_GP	13
#define X86_TRAP_PF	14
#define X86_TRAP_SPURIOUS 15
#define X86_TRAP_MF	16
#define X86_TRAP_AC	17
#define X86_TRAP_MC	18
#define X86_TRAP_XF	19
#define X86_TRAP_VE	20
#define X86_TRAP_CP	21
#define X86_TRAP_VC	29
#define X86_TRAP_IRET	32

/* ---- CPU features and ALTERNATIVE (asm/cpufeatures.h, asm/alternative.h) -------- */

#define X86_FEATURE_ALWAYS	(3*32+21)
#define X86_FEATURE_REP_GOOD	(3*32+16)
#define X86_FEATURE_ERMS	(9*32+ 9)
#define X86_FEATURE_SMAP	(9*32+20)
#define X86_FEATURE_FSRM	(18*32+ 4)
#define X86_FEATURE_CLAC_STAC	X86_FEATURE_SMAP
/* Features emu never selects (their ALTERNATIVE keeps the old instruction). */
#define X86_FEATURE_LFENCE_RDTSC	(3*32+18)
#define X86_FEATURE_LA57	(16*32+16)
#define X86_FEATURE_XMM2	(0*32+26)
#define X86_FEATURE_RETPOLINE	(7*32+12)
#define X86_FEATURE_RETHUNK	(11*32+14)

#define ALT_FLAGS_SHIFT		16
#define ALT_FLAG_NOT		(1 << 0)
#define ALT_NOT(feature)	((ALT_FLAG_NOT << ALT_FLAGS_SHIFT) | (feature))
#define ALT_FLAG_DIRECT_CALL	(1 << 1)
#define ALT_DIRECT_CALL(feature) ((ALT_FLAG_DIRECT_CALL << ALT_FLAGS_SHIFT) | (feature))

/* gas comparisons yield -1 for true; "& 1" turns that into 1. */
#define EMU_HAS_FEATURE(f) \
	(((((f) == X86_FEATURE_ALWAYS) & 1)) | \
	 ((((f) == X86_FEATURE_REP_GOOD) & 1) & EMU_CPU_REP_GOOD) | \
	 ((((f) == X86_FEATURE_ERMS) & 1) & EMU_CPU_ERMS) | \
	 ((((f) == X86_FEATURE_FSRM) & 1) & EMU_CPU_FSRM) | \
	 ((((f) == X86_FEATURE_SMAP) & 1) & EMU_CPU_SMAP))
#define EMU_ALT_SELECT(ft) \
	(EMU_HAS_FEATURE((ft) & 0xffff) ^ ((((ft) >> ALT_FLAGS_SHIFT) & ALT_FLAG_NOT)))

/*
 * EMU_ALT_KBUILD=1 assembles ALTERNATIVE sites the way a kernel build leaves them, for
 * testing emu's --object path: the old instruction stays at the site, padded with 0x90 to
 * the longest replacement, each replacement goes to .altinstr_replacement, and each choice
 * gets one .altinstructions record: s32 site - ., s32 replacement - ., u32 feature|flags,
 * u8 site length, u8 replacement length (the v6.3+ record layout; UNVERIFIED for other
 * releases).  emu/objects.py patches the sites for the selected CPU, as the boot-time
 * alternatives pass would.
 */
#ifndef EMU_ALT_KBUILD
#define EMU_ALT_KBUILD 0
#endif
#define EMU_ALT_GROW(want, have)	((((want) - (have)) > 0) & 1) * ((want) - (have))

.macro emu_alt_record site, site_end, repl, repl_end, ft_flags
	.pushsection .altinstructions, "a"
	.long \site - .
	.long \repl - .
	.long \ft_flags
	.byte \site_end - \site
	.byte \repl_end - \repl
	.popsection
.endm

.macro emu_alt_replacement start, end, instr
	.pushsection .altinstr_replacement, "ax"
\start:
	\instr
\end:
	.popsection
.endm

.macro emu_alt_kbuild oldinstr, new1, ft1, new2="", ft2=0, new3="", ft3=0, n=1
.Lemu_alt_site\@:
	\oldinstr
.Lemu_alt_old\@:
	.skip EMU_ALT_GROW(.Lemu_alt_r1e\@ - .Lemu_alt_r1\@, .Lemu_alt_old\@ - .Lemu_alt_site\@), 0x90
.Lemu_alt_p1\@:
	.if \n >= 2
	.skip EMU_ALT_GROW(.Lemu_alt_r2e\@ - .Lemu_alt_r2\@, .Lemu_alt_p1\@ - .Lemu_alt_site\@), 0x90
	.endif
.Lemu_alt_p2\@:
	.if \n >= 3
	.skip EMU_ALT_GROW(.Lemu_alt_r3e\@ - .Lemu_alt_r3\@, .Lemu_alt_p2\@ - .Lemu_alt_site\@), 0x90
	.endif
.Lemu_alt_end\@:
	emu_alt_record .Lemu_alt_site\@, .Lemu_alt_end\@, .Lemu_alt_r1\@, .Lemu_alt_r1e\@, \ft1
	emu_alt_replacement .Lemu_alt_r1\@, .Lemu_alt_r1e\@, "\new1"
	.if \n >= 2
	emu_alt_record .Lemu_alt_site\@, .Lemu_alt_end\@, .Lemu_alt_r2\@, .Lemu_alt_r2e\@, \ft2
	emu_alt_replacement .Lemu_alt_r2\@, .Lemu_alt_r2e\@, "\new2"
	.endif
	.if \n >= 3
	emu_alt_record .Lemu_alt_site\@, .Lemu_alt_end\@, .Lemu_alt_r3\@, .Lemu_alt_r3e\@, \ft3
	emu_alt_replacement .Lemu_alt_r3\@, .Lemu_alt_r3e\@, "\new3"
	.endif
.endm

.macro ALTERNATIVE oldinstr, newinstr, ft_flags
	.if EMU_ALT_KBUILD
	emu_alt_kbuild "\oldinstr", "\newinstr", \ft_flags
	.elseif EMU_ALT_SELECT(\ft_flags)
	\newinstr
	.else
	\oldinstr
	.endif
.endm

.macro ALTERNATIVE_2 oldinstr, newinstr1, ft_flags1, newinstr2, ft_flags2
	.if EMU_ALT_KBUILD
	emu_alt_kbuild "\oldinstr", "\newinstr1", \ft_flags1, "\newinstr2", \ft_flags2, n=2
	.elseif EMU_ALT_SELECT(\ft_flags2)
	\newinstr2
	.elseif EMU_ALT_SELECT(\ft_flags1)
	\newinstr1
	.else
	\oldinstr
	.endif
.endm

.macro ALTERNATIVE_3 oldinstr, newinstr1, ft_flags1, newinstr2, ft_flags2, newinstr3, ft_flags3
	.if EMU_ALT_KBUILD
	emu_alt_kbuild "\oldinstr", "\newinstr1", \ft_flags1, "\newinstr2", \ft_flags2, "\newinstr3", \ft_flags3, n=3
	.elseif EMU_ALT_SELECT(\ft_flags3)
	\newinstr3
	.elseif EMU_ALT_SELECT(\ft_flags2)
	\newinstr2
	.elseif EMU_ALT_SELECT(\ft_flags1)
	\newinstr1
	.else
	\oldinstr
	.endif
.endm

/* ---- SMAP (asm/smap.h) ----------------------------------------------------------- */

#if EMU_CPU_SMAP
#define ASM_STAC	stac
#define ASM_CLAC	clac
#else
#define ASM_STAC
#define ASM_CLAC
#endif
#define ASM_CLAC_UNSAFE	ASM_CLAC
#define ASM_STAC_UNSAFE	ASM_STAC

/* ---- exception table types (asm/extable_fixup_types.h), per layout -------------- */

#define EX_DATA_TYPE_SHIFT	0
#define EX_DATA_REG_SHIFT	8
#define EX_DATA_FLAG_SHIFT	12
#define EX_DATA_IMM_SHIFT	16
#define EX_DATA_REG(reg)	((reg) << EX_DATA_REG_SHIFT)
#define EX_DATA_FLAG(flag)	((flag) << EX_DATA_FLAG_SHIFT)
#define EX_DATA_IMM(imm)	((imm) << EX_DATA_IMM_SHIFT)
#define EX_FLAG_CLEAR_AX	EX_DATA_FLAG(1)
#define EX_FLAG_CLEAR_DX	EX_DATA_FLAG(2)
#define EX_FLAG_CLEAR_AX_DX	EX_DATA_FLAG(3)

#define EX_TYPE_NONE		 0
#define EX_TYPE_DEFAULT		 1
#define EX_TYPE_FAULT		 2
#define EX_TYPE_UACCESS		 3
#define EX_TYPE_COPY		 4
#define EX_TYPE_CLEAR_FS	 5
#define EX_TYPE_FPU_RESTORE	 6
#if EMU_EX_LAYOUT == 516
#define EX_TYPE_WRMSR		 7
#define EX_TYPE_RDMSR		 8
#define EX_TYPE_BPF		 9
#define EX_TYPE_WRMSR_IN_MCE	10
#define EX_TYPE_RDMSR_IN_MCE	11
#define EX_TYPE_DEFAULT_MCE_SAFE 12
#define EX_TYPE_FAULT_MCE_SAFE	13
#else
#define EX_TYPE_BPF		 7
#define EX_TYPE_WRMSR		 8
#define EX_TYPE_RDMSR		 9
#define EX_TYPE_WRMSR_SAFE	10
#define EX_TYPE_RDMSR_SAFE	11
#define EX_TYPE_WRMSR_IN_MCE	12
#define EX_TYPE_RDMSR_IN_MCE	13
#define EX_TYPE_DEFAULT_MCE_SAFE 14
#define EX_TYPE_FAULT_MCE_SAFE	15
#define EX_TYPE_POP_REG		16
#define EX_TYPE_IMM_REG		17
#define EX_TYPE_EFAULT_REG	(EX_TYPE_IMM_REG | EX_DATA_IMM(-14))
#define EX_TYPE_ZERO_REG	(EX_TYPE_IMM_REG | EX_DATA_IMM(0))
#define EX_TYPE_ONE_REG		(EX_TYPE_IMM_REG | EX_DATA_IMM(1))
#define EX_TYPE_POP_ZERO	(EX_TYPE_POP_REG | EX_DATA_IMM(0))
#define EX_TYPE_FAULT_SGX	18
#define EX_TYPE_UCOPY_LEN	19
#define EX_TYPE_UCOPY_LEN1	(EX_TYPE_UCOPY_LEN | EX_DATA_IMM(1))
#define EX_TYPE_UCOPY_LEN4	(EX_TYPE_UCOPY_LEN | EX_DATA_IMM(4))
#define EX_TYPE_UCOPY_LEN8	(EX_TYPE_UCOPY_LEN | EX_DATA_IMM(8))
#define EX_TYPE_ZEROPAD		20
#define EX_TYPE_ERETU		21
#endif

/* ---- exception table entries (asm/asm.h) ---------------------------------------- */

/*
 * Register numbers in the data word use the instruction-encoding order
 * (ax cx dx bx sp bp si di r8..r15).  emu_extable_reg sets .Lemu_ex_reg to the
 * number of the register named by its argument ("%rax", "%eax", "%ax", "%al", ...).
 */
.macro emu_extable_reg reg:req
	.set .Lemu_ex_found, 0
	.set .Lemu_ex_regno, 0
	.irp rs,rax,rcx,rdx,rbx,rsp,rbp,rsi,rdi,r8,r9,r10,r11,r12,r13,r14,r15
	.ifc \reg, %\rs
	.set .Lemu_ex_found, 1
	.set .Lemu_ex_reg, .Lemu_ex_regno
	.endif
	.set .Lemu_ex_regno, .Lemu_ex_regno + 1
	.endr
	.set .Lemu_ex_regno, 0
	.irp rs,eax,ecx,edx,ebx,esp,ebp,esi,edi,r8d,r9d,r10d,r11d,r12d,r13d,r14d,r15d
	.ifc \reg, %\rs
	.set .Lemu_ex_found, 1
	.set .Lemu_ex_reg, .Lemu_ex_regno
	.endif
	.set .Lemu_ex_regno, .Lemu_ex_regno + 1
	.endr
	.set .Lemu_ex_regno, 0
	.irp rs,ax,cx,dx,bx,sp,bp,si,di,r8w,r9w,r10w,r11w,r12w,r13w,r14w,r15w
	.ifc \reg, %\rs
	.set .Lemu_ex_found, 1
	.set .Lemu_ex_reg, .Lemu_ex_regno
	.endif
	.set .Lemu_ex_regno, .Lemu_ex_regno + 1
	.endr
	.set .Lemu_ex_regno, 0
	.irp rs,al,cl,dl,bl,spl,bpl,sil,dil,r8b,r9b,r10b,r11b,r12b,r13b,r14b,r15b
	.ifc \reg, %\rs
	.set .Lemu_ex_found, 1
	.set .Lemu_ex_reg, .Lemu_ex_regno
	.endif
	.set .Lemu_ex_regno, .Lemu_ex_regno + 1
	.endr
	.if .Lemu_ex_found == 0
	.error "emu: _ASM_EXTABLE_TYPE_REG: unknown register \reg"
	.endif
.endm

#if EMU_EXTABLE_ABI == 1
/* Up to v5.15: insn - ., fixup - ., handler - . */
# define _ASM_EXTABLE_HANDLE(from, to, handler)		\
	.pushsection "__ex_table","a" ASM_NL		\
	.balign 4 ASM_NL				\
	.long (from) - . ASM_NL				\
	.long (to) - . ASM_NL				\
	.long (handler) - . ASM_NL			\
	.popsection
# define _ASM_EXTABLE(from, to)		_ASM_EXTABLE_HANDLE(from, to, ex_handler_default)
# define _ASM_EXTABLE_UA(from, to)	_ASM_EXTABLE_HANDLE(from, to, ex_handler_uaccess)
# define _ASM_EXTABLE_CPY(from, to)	_ASM_EXTABLE_HANDLE(from, to, ex_handler_copy)
# define _ASM_EXTABLE_FAULT(from, to)	_ASM_EXTABLE_HANDLE(from, to, ex_handler_fault)
# define _ASM_EXTABLE_EX(from, to)	_ASM_EXTABLE_HANDLE(from, to, ex_handler_ext)
# define _ASM_EXTABLE_REFCOUNT(from, to) _ASM_EXTABLE_HANDLE(from, to, ex_handler_refcount)
#else
/* v5.16: the third word is the type; v5.17+: the type/reg/flags/imm data word. */
# define _ASM_EXTABLE_TYPE(from, to, type)		\
	.pushsection "__ex_table","a" ASM_NL		\
	.balign 4 ASM_NL				\
	.long (from) - . ASM_NL				\
	.long (to) - . ASM_NL				\
	.long type ASM_NL				\
	.popsection
# define _ASM_EXTABLE_TYPE_REG(from, to, type, reg)	\
	.pushsection "__ex_table","a" ASM_NL		\
	.balign 4 ASM_NL				\
	.long (from) - . ASM_NL				\
	.long (to) - . ASM_NL				\
	emu_extable_reg reg ASM_NL			\
	.long (type) | EX_DATA_REG(.Lemu_ex_reg) ASM_NL	\
	.popsection
# define _ASM_EXTABLE(from, to)		_ASM_EXTABLE_TYPE(from, to, EX_TYPE_DEFAULT)
# define _ASM_EXTABLE_UA(from, to)	_ASM_EXTABLE_TYPE(from, to, EX_TYPE_UACCESS)
# define _ASM_EXTABLE_CPY(from, to)	_ASM_EXTABLE_TYPE(from, to, EX_TYPE_COPY)
# define _ASM_EXTABLE_FAULT(from, to)	_ASM_EXTABLE_TYPE(from, to, EX_TYPE_FAULT)
#endif

/* ---- per-task and per-CPU state the copy files mention --------------------------- */

#define TASK_SIZE_MAX	0x00007ffffffff000
#define PAGE_SIZE	4096
#define PAGE_SHIFT	12
#define L1_CACHE_BYTES	64
#define PER_CPU_VAR(var)	%gs:var
#define THREAD_INFO(reg, off)	(off)(reg)

#define EFAULT		14
#define EIO		5

/* ---- Kconfig tests (linux/kconfig.h) ---------------------------------------------- */

/*
 * IS_ENABLED(CONFIG_FOO) is 1 when the -D flags define CONFIG_FOO as 1, else 0; usable in
 * #if and, because it expands to a plain number, in gas .if.  emu builds with
 * CONFIG_X86_64 and CONFIG_64BIT only.
 */
#define EMU_KCONFIG_ON_1		0,
#define EMU_KCONFIG_SECOND(a, b, ...)	b
#define EMU_KCONFIG_PICK(junk)		EMU_KCONFIG_SECOND(junk 1, 0)
#define EMU_KCONFIG_TEST(v)		EMU_KCONFIG_PICK(EMU_KCONFIG_ON_##v)
#define IS_ENABLED(option)		EMU_KCONFIG_TEST(option)
#define IS_BUILTIN(option)		EMU_KCONFIG_TEST(option)
#define IS_REACHABLE(option)		EMU_KCONFIG_TEST(option)

/* ---- boot-time constants (asm/runtime-const.h, v6.12+) ------------------------------ */

/*
 * The kernel assembles a placeholder 64-bit immediate and patches the real value in at
 * boot.  emu assembles the value directly.  USER_PTR_MAX is taken as TASK_SIZE_MAX - 1
 * (the 4-level-paging value without LAM; UNVERIFIED against every release).
 */
.macro RUNTIME_CONST_PTR sym:req, reg:req
	.ifc \sym, USER_PTR_MAX
	movabsq $(TASK_SIZE_MAX - 1), %\reg
	.else
	.error "emu: RUNTIME_CONST_PTR: no value known for \sym"
	.endif
.endm

/* CONFIG_COPY_MC_TEST / CONFIG_MCSAFE_TEST hooks (5.9-5.10): compiled out. */
#define COPY_MC_TEST_CTL
#define MCSAFE_TEST_CTL
.macro COPY_MC_TEST_SRC reg count target
.endm
.macro COPY_MC_TEST_DST reg count target
.endm
.macro MCSAFE_TEST_SRC reg count target
.endm
.macro MCSAFE_TEST_DST reg count target
.endm

#endif /* EMU_KERNEL_H */
