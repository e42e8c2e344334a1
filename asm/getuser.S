/* SPDX-License-Identifier: MIT */
/*
 * emu fault-in loads: a __get_user-style single-byte load from user memory.
 *
 * Written for emu from kernel-facts.md (sections 4b, 5c, 6a, 7 and 8); not kernel text.
 *
 * The write(2) caller model (emu/caller.py) "faults in" the user buffer before each
 * atomic copy, as generic_perform_write() does with fault_in_pages_readable() (up to
 * v5.15) or fault_in_readable() (v5.16 on).  Those touch the buffer with a get_user
 * style load.  What decides whether a machine check on that load is survivable is
 * only the exception-table entry of the load, so this file offers the same load with
 * the three kinds of entry the facts name:
 *
 *   emu_fault_in_ua         _ASM_EXTABLE_UA: ex_handler_uaccess / EX_TYPE_UACCESS.
 *                           getuser.S up to v6.3 and again after the 2024 revert
 *                           (CVE-2024-26674); inline get_user built with asm goto.
 *   emu_fault_in_default    _ASM_EXTABLE: ex_handler_default / EX_TYPE_DEFAULT.
 *                           getuser.S in v6.4 - v6.7 (b19b74bc99b1).
 *   emu_fault_in_efault_reg _ASM_EXTABLE_TYPE_REG(..., EX_TYPE_EFAULT_REG, eax):
 *                           the inline get_user / futex class of v5.17+ (99641e094d6c,
 *                           4c132d1d844a).  Only exists in the v5.17+ data-word format.
 *
 * Calling convention (like __get_user_1): rax = user address.  Returns eax = 0 and
 * edx = the byte on success; eax = -EFAULT and edx = 0 when the load faulted.  The
 * routines open and close the user-access window themselves.
 */

#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/smap.h>
#include <asm/errno.h>

/*
 * Shared way out of a faulted load for the handler types that only move the IP:
 * report -EFAULT and a zero value, close the user-access window.
 */
SYM_CODE_START_LOCAL(emu_fault_in_efault)
	ASM_CLAC
	xorl %edx,%edx
	movq $-EFAULT,%rax
	RET
SYM_CODE_END(emu_fault_in_efault)

/* UACCESS entry: the handler moves the IP to emu_fault_in_efault. */
SYM_FUNC_START(emu_fault_in_ua)
	ASM_STAC
1:	movzbl (%rax),%edx		/* the one user load */
	xorl %eax,%eax
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, emu_fault_in_efault)
SYM_FUNC_END(emu_fault_in_ua)

/* DEFAULT entry: same code, same fixup, only the entry's type differs. */
SYM_FUNC_START(emu_fault_in_default)
	ASM_STAC
1:	movzbl (%rax),%edx
	xorl %eax,%eax
	ASM_CLAC
	RET
	_ASM_EXTABLE(1b, emu_fault_in_efault)
SYM_FUNC_END(emu_fault_in_default)

#if EMU_EXTABLE_ABI == 3
/*
 * EFAULT_REG entry: the handler itself writes -EFAULT into eax (the register
 * named in the entry) and clears edx (EX_FLAG_CLEAR_DX), then resumes at 2:,
 * which is also the success path.  eax is zeroed before the load so that the
 * success path returns 0.
 */
SYM_FUNC_START(emu_fault_in_efault_reg)
	movq %rax,%rcx
	xorl %eax,%eax
	ASM_STAC
1:	movzbl (%rcx),%edx
2:	ASM_CLAC
	RET
	_ASM_EXTABLE_TYPE_REG(1b, 2b, EX_TYPE_EFAULT_REG | EX_FLAG_CLEAR_DX, %eax)
SYM_FUNC_END(emu_fault_in_efault_reg)
#endif
