"""Regression (issue 17, class 11): the machine was too permissive.

A routine that wrote into its own kernel text took no fault and returned cleanly; so did one
that ran code from a data page, and (on every CPU) one that ran a user page; ``wrmsr``,
``out``, ``lgdt``, ``syscall`` ran as no-ops and ``hlt`` was reported as an endless loop.
The machine now maps the image as a booted kernel does (text read-only, rodata read-only and
NX, data NX; SMEP when the CPU has it) and stops before a system instruction: each case ends
in a named state with a message that says what happened where.  The hostile routines are
written here, kernel-style; real routines are covered by the golden, silicon and Debian
image tests, which run unchanged.
"""

from __future__ import annotations

import pytest

from emu.build.target import Settings, Target, get_target
from emu.core import layout as L
from emu.core import native
from emu.core.machine import Buffers, Call, Machine, State
from emu.kernel.eras import Routine, parse_cpu
from emu.kernel.extable import Encoding
from emu.kernel.policy import Kernel
from emu.kernel.severity import Severity

HEAD = """#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/smap.h>

	.section .rodata
	.type ro_table, @object
ro_table:
	.quad 0x1122334455667788
	.size ro_table, 8

	.data
	.type scratch, @object
scratch:
	.quad 0
	.size scratch, 8

	.text
"""

HOSTILE = HEAD + """
SYM_FUNC_START(write_own_text)
	movb $0x90, write_own_text(%rip)
	xorl %eax, %eax
	RET
SYM_FUNC_END(write_own_text)

SYM_FUNC_START(write_rodata)
	movq %rdx, ro_table(%rip)
	xorl %eax, %eax
	RET
SYM_FUNC_END(write_rodata)

/* The control: .data is writable. */
SYM_FUNC_START(write_data)
	movq %rdx, scratch(%rip)
	movq scratch(%rip), %rax
	subq %rdx, %rax
	RET
SYM_FUNC_END(write_data)

/* A write to text at an instruction with an __ex_table entry is fixed up, as any #PF. */
SYM_FUNC_START(write_text_fixed)
	leaq write_text_fixed(%rip), %rcx
1:	movb $0, (%rcx)
	xorl %eax, %eax
	RET
2:	movl %edx, %eax
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(write_text_fixed)

/* rep stos into text: the bulk string step must leave it to the CPU. */
SYM_FUNC_START(stos_own_text)
	leaq stos_own_text(%rip), %rdi
	movq %rdx, %rcx
	xorl %eax, %eax
	rep stosb
	RET
SYM_FUNC_END(stos_own_text)

/* rep movs from the user source into rodata. */
SYM_FUNC_START(movs_into_rodata)
	ASM_STAC
	leaq ro_table(%rip), %rdi
	movq %rdx, %rcx
	rep movsb
	ASM_CLAC
	xorl %eax, %eax
	RET
SYM_FUNC_END(movs_into_rodata)

SYM_FUNC_START(exec_data)
	leaq scratch(%rip), %rax
	jmp *%rax
SYM_FUNC_END(exec_data)

SYM_FUNC_START(exec_rodata)
	call ro_table
	RET
SYM_FUNC_END(exec_rodata)

SYM_FUNC_START(exec_stack)
	movb $0xc3, -64(%rsp)
	leaq -64(%rsp), %rax
	call *%rax
	RET
SYM_FUNC_END(exec_stack)

/* Direction "from": %rdi is the kernel buffer, in the direct map. */
SYM_FUNC_START(exec_kernel_buffer)
	movb $0xc3, (%rdi)
	call *%rdi
	RET
SYM_FUNC_END(exec_kernel_buffer)

/* Direction "to": %rdi is the user buffer.  Plant a ret there and call it (ret2usr). */
SYM_FUNC_START(exec_user)
	ASM_STAC
	movb $0xc3, (%rdi)
	ASM_CLAC
	call *%rdi
	xorl %eax, %eax
	RET
SYM_FUNC_END(exec_user)

/* What copy routines do execute, and the unprivileged instructions Unicorn models. */
SYM_FUNC_START(allowed)
	endbr64
	ASM_STAC
	lfence
	mfence
	sfence
	pause
	rdtsc
	ASM_CLAC
	xorl %eax, %eax
	RET
SYM_FUNC_END(allowed)
"""

#: (routine suffix, instruction, the name the message gives).
SYSTEM = [
    ("syscall", "syscall", "syscall"), ("sysret", "sysretq", "sysret"),
    ("sysenter", "sysenter", "sysenter"), ("sysexit", "sysexitq", "sysexit"),
    ("wrmsr", "wrmsr", "wrmsr"), ("rdmsr", "rdmsr", "rdmsr"), ("rdpmc", "rdpmc", "rdpmc"),
    ("in", "inb $0x60, %al", "in"), ("out", "outb %al, $0x80", "out"),
    ("in_dx", "inl (%dx), %eax", "in"), ("out_dx", "outw %ax, (%dx)", "out"),
    ("ins", "insb", "insb"), ("outs", "outsb", "outsb"),
    ("lgdt", "lgdt (%rsp)", "lgdt"), ("lidt", "lidt (%rsp)", "lidt"),
    ("sgdt", "sgdt (%rsp)", "sgdt"), ("sidt", "sidt (%rsp)", "sidt"),
    ("lldt", "lldt %ax", "lldt"), ("ltr", "ltr %ax", "ltr"), ("str", "str %eax", "str"),
    ("hlt", "hlt", "hlt"), ("cli", "cli", "cli"), ("sti", "sti", "sti"),
    ("mov_from_cr0", "movq %cr0, %rax", "mov from %cr0"),
    ("mov_to_cr0", "movq %rax, %cr0", "mov to %cr0"),
    ("mov_to_cr3", "movq %rax, %cr3", "mov to %cr3"),
    ("mov_to_cr4", "movq %rax, %cr4", "mov to %cr4"),
    ("mov_to_cr8", "movq %rax, %cr8", "mov to %cr8"),
    ("mov_to_db7", "movq %rax, %db7", "mov to %db7"),
    ("invlpg", "invlpg (%rsi)", "invlpg"), ("invpcid", "invpcid (%rsi), %rax", "invpcid"),
    ("int80", "int $0x80", "int"), ("int14", "int $14", "int"), ("int3", "int3", "int3"),
    ("int1", "int1", "int1"), ("iretq", "iretq", "iretq"), ("swapgs", "swapgs", "swapgs"),
    ("wbinvd", "wbinvd", "wbinvd"), ("invd", "invd", "invd"), ("clts", "clts", "clts"),
    ("lmsw", "lmsw %ax", "lmsw"), ("smsw", "smsw %eax", "smsw"),
    ("xsetbv", "xsetbv", "xsetbv"), ("wrgsbase", "wrgsbase %rax", "wrgsbase"),
    ("monitor", "monitor", "monitor"), ("mwait", "mwait", "mwait"),
    ("vmcall", "vmcall", "vmcall"), ("vmmcall", "vmmcall", "vmmcall"),
]
#: Each system instruction after a 2-byte ``incl %eax``, so it sits at ``+0x2``.
SYSTEM_SRC = HEAD + "".join(
    f"SYM_FUNC_START(sys_{n})\n\tincl %eax\n\t{insn}\n\tincl %eax\n\tRET\nSYM_FUNC_END(sys_{n})\n"
    for n, insn, _ in SYSTEM)

SETTINGS = Settings(Encoding.DATA, 517, Severity.V5_17)
_TARGETS: dict[tuple[str, str], Target] = {}


def target(cpu: str = "skylake-sp", src: str = HOSTILE) -> Target:
    key = (cpu, src)
    if key not in _TARGETS:
        _TARGETS[key] = get_target(src, "hostile.S", SETTINGS, parse_cpu(cpu))
    return _TARGETS[key]


def run(name: str, cpu: str = "skylake-sp", direction: str = "from", src: str = HOSTILE):  # type: ignore[no-untyped-def]
    t = target(cpu, src)
    return t, t.run(Routine(name), Buffers(length=8, direction=direction))


# ---- read-only text and rodata --------------------------------------------------------------


def test_a_routine_that_writes_its_own_text_is_a_protection_fault() -> None:
    t, o = run("write_own_text")
    at = t.image.symbol("write_own_text").addr
    assert o.state is State.PROTECTION_FAULT
    assert o.message == (f"protection fault: write to kernel text (write_own_text) at {at:#x}: "
                         "the page is read-only; #PF error code 0x3, no __ex_table entry")
    assert [(f.kind, f.rip, f.address, f.action) for f in o.faults] == \
        [("pf", at, at, "protection_fault")]
    assert t.machine.read(at, 1) == t.image.read(at, 1) != b"\x90"    # nothing was written


def test_a_routine_that_writes_rodata_is_a_protection_fault() -> None:
    t, o = run("write_rodata")
    at = t.image.symbol("ro_table").addr
    assert o.state is State.PROTECTION_FAULT
    assert f"write to kernel rodata (ro_table) at {at:#x}: the page is read-only" in o.message
    assert [f.address for f in o.faults] == [at]
    assert t.machine.read(at, 8) == (0x1122334455667788).to_bytes(8, "little")


def test_data_stays_writable() -> None:
    _, o = run("write_data")
    assert o.state is State.RETURNED and o.return_value == 0 and o.faults == ()


def test_a_write_to_text_with_an_extable_entry_is_fixed_up() -> None:
    t, o = run("write_text_fixed")
    assert o.state is State.RETURNED
    assert o.return_value == 8                       # the fixup's movl %edx, %eax
    (f,) = o.faults
    assert (f.kind, f.address, f.action, f.handler) == \
        ("pf", t.image.symbol("write_text_fixed").addr, "fixup", "EX_TYPE_UACCESS")


def test_rep_stos_into_text_stops_at_its_first_store() -> None:
    t, o = run("stos_own_text")
    at = t.image.symbol("stos_own_text").addr
    assert o.state is State.PROTECTION_FAULT and "write to kernel text (stos_own_text)" in o.message
    assert [f.address for f in o.faults] == [at]


# ---- NX: data, rodata, the stack, the direct map ---------------------------------------------


@pytest.mark.parametrize("name,where", [
    ("exec_data", "kernel data (scratch)"), ("exec_rodata", "kernel rodata (ro_table)"),
    ("exec_stack", "the kernel stack"), ("exec_kernel_buffer", "the kernel buffer")])
def test_running_a_non_executable_page_is_a_protection_fault(name: str, where: str) -> None:
    t, o = run(name)
    assert o.state is State.PROTECTION_FAULT
    (f,) = o.faults
    assert f.kind == "pf" and f.rip == f.address            # the fetch itself faulted
    assert o.message == (f"protection fault: instruction fetch from {where} at {f.address:#x}: "
                         "the page is not executable (NX); #PF error code 0x11, no __ex_table "
                         "entry")
    if name == "exec_kernel_buffer":
        assert f.address == Buffers(length=8).dst


# ---- SMEP: exactly when the CPU has it -----------------------------------------------------------


@pytest.mark.parametrize("cpu", ["skylake-sp", "haswell-ep", "milan", "none", "erms"])
def test_running_a_user_page_is_a_protection_fault_exactly_with_smep(cpu: str) -> None:
    t, o = run("exec_user", cpu, direction="to")
    user = Buffers(length=8, direction="to").dst
    if "SMEP" in parse_cpu(cpu):
        assert o.state is State.PROTECTION_FAULT
        assert o.message == (f"protection fault: instruction fetch from the user buffer at "
                             f"{user:#x}: a user page, and the CPU has SMEP; #PF error code "
                             "0x11, no __ex_table entry")
        assert [(f.rip, f.address) for f in o.faults] == [(user, user)]
    else:                       # the CPU runs the planted ret in kernel mode and comes back
        assert o.state is State.RETURNED and o.faults == ()
        assert o.return_value == 0


def test_smap_still_refuses_user_data_access_without_ac() -> None:
    src = HEAD + "SYM_FUNC_START(peek)\n\tmovb (%rsi), %al\n\tRET\nSYM_FUNC_END(peek)\n"
    for cpu in ("skylake-sp", "haswell-ep"):
        _, o = run("peek", cpu, src=src)
        assert o.state is (State.SMAP_VIOLATION if "SMAP" in parse_cpu(cpu) else
                           State.RETURNED), cpu


# ---- system instructions -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,name", [(s, n) for s, _, n in SYSTEM], ids=[s for s, _, _ in SYSTEM])
def test_a_system_instruction_ends_the_case_before_it_runs(suffix: str, name: str) -> None:
    _, o = run(f"sys_{suffix}", src=SYSTEM_SRC)
    assert o.state is State.SYSTEM_INSTRUCTION
    assert o.message == (f"system instruction '{name}' at sys_{suffix}+0x2: a copy routine "
                         "never executes it, and emu does not model it")
    assert o.faults == ()


def test_instructions_copy_routines_use_still_run() -> None:
    for cpu in ("skylake-sp", "haswell-ep", "none"):
        _, o = run("allowed", cpu)
        assert o.state is State.RETURNED and o.faults == (), (cpu, o.message)


def test_a_system_instruction_reached_through_a_trap_is_named_too() -> None:
    """int3 is no exit (Debian's images hold hundreds of them as padding); it traps, and the
    machine names it at its own address, also when a jump lands on an int3 byte inside
    another instruction."""
    src = HEAD + """SYM_FUNC_START(into_the_middle)
	jmp 1f + 1
1:	movl $0xcccccccc, %eax
	RET
SYM_FUNC_END(into_the_middle)
"""
    t, o = run("into_the_middle", src=src)
    assert o.state is State.SYSTEM_INSTRUCTION
    assert o.message.startswith("system instruction 'int3' at into_the_middle+0x3:")


# ---- the bulk string step: compiled, Python and iterating machines agree --------------------


@pytest.mark.parametrize("name,direction", [("stos_own_text", "from"),
                                            ("movs_into_rodata", "from")])
def test_bulk_strings_agree_on_protection_faults(name: str, direction: str) -> None:
    t = target()
    b = Buffers(length=64, direction=direction)
    call = Call(t.image.symbol(name).addr, (("rdi", b.dst), ("rsi", b.src), ("rdx", b.length)))
    ms = [Machine(t.image, compiled=False, smap=True, smep=True),
          Machine(t.image, bulk_strings=False, smap=True, smep=True)]
    if native.load() is not None:
        ms.append(Machine(t.image, compiled=True, smap=True, smep=True))
    try:
        raws = [m.run(call, b, Kernel(t.image.extable, SETTINGS.severity, t.image.read))
                for m in ms]
    finally:
        for m in ms:
            m.close()
    assert raws[0].state is State.PROTECTION_FAULT
    assert all(r == raws[0] for r in raws[1:])
    assert raws[0].faults[0].event.address & ~0xFFF == \
        (t.image.symbol(name).addr if name.startswith("stos") else
         t.image.symbol("ro_table").addr) & ~0xFFF
    assert L.TEXT_BASE <= raws[0].faults[0].event.address < L.STUB_BASE


def test_an_objects_sections_are_laid_out_one_protection_per_page() -> None:
    """text, then rodata, then data, each class from a page of its own, whatever the file
    order (the source above puts .rodata and .data first); before, they shared pages."""
    img = target().image
    classes = {s.name: L.section_protection(s.executable, s.writable) for s in img.sections}
    assert classes == {".text": L.TEXT, ".rodata": L.RODATA, ".data": L.DATA}
    pages = {name: {p for s in img.sections if s.name == name
                    for p in range(s.addr & ~0xFFF, s.end, L.PAGE)} for name in classes}
    assert not pages[".text"] & pages[".rodata"] and not pages[".rodata"] & pages[".data"]
    by_addr = sorted(img.sections, key=lambda s: s.addr)
    assert [s.name for s in by_addr] == [".text", ".rodata", ".data"]
