/* SPDX-License-Identifier: MIT */
/*
 * emu silicon harness: run an assembled user-copy routine on the real CPU, in user space.
 *
 * Written for the emu project (issue 9, item 4).  The tests link this file with the very
 * object emu assembled for an era and CPU (the same bytes emu loads into Unicorn), after
 * rewriting every stac/clac in it to a 3-byte NOP: those instructions are privileged and
 * would raise #UD here.  The harness then plays the kernel's part for a #PF:
 *
 *   - buffers live in two mmap'ed windows laid out like emu's (guard page, 16 data pages,
 *     guard page), with a PROT_NONE page beyond each end;
 *   - the "user" window can have pages made PROT_NONE: touching one raises #PF, which
 *     Linux delivers as SIGSEGV with the faulting RIP in the ucontext;
 *   - the SIGSEGV handler looks the RIP up in the linked __ex_table and applies the
 *     entry's handler the way the era's kernel does (ip = fixup; ax = trap number 14 for
 *     the copy/fault handlers; ax untouched for uaccess), then returns so the routine
 *     continues at the fixup.  A fault with no entry is an oops;
 *   - calls out of the object (undefined symbols) reach a ud2 stub the tests link in,
 *     as in emu, so they end as an oops with #UD (SIGILL) at the stub.
 *
 * Usage:  harness PATTERN_FILE EXTABLE_ABI EX_LAYOUT < cases
 *
 *   PATTERN_FILE  (WINDOW_PAGES + 2) * 4096 bytes: the source window contents, guard pages
 *                 included (emu.core.records.source_pattern of that size)
 *   EXTABLE_ABI   1 handler pointers (<= v5.15), 2 type numbers (v5.16), 3 data words
 *   EX_LAYOUT     516, 517 or 610: the EX_TYPE numbering (DEFAULT, FAULT, UACCESS, COPY,
 *                 the *_MCE_SAFE pair, IMM_REG and UCOPY_LEN are modelled; see classify)
 *
 * One case per input line:
 *   ROUTINE LEN_REG DIRECTION LEN SRC_ALIGN DST_ALIGN UNMAPPED
 * LEN_REG is rdx or rcx (the count's register), or rax for a get_user helper (rax = the
 * source address, LEN is the buffer size).  DIRECTION is from (the source is the user
 * window) or to.  UNMAPPED is a comma list of user-buffer offsets whose page is made
 * PROT_NONE, or "-".
 *
 * First output line: "windows user=HEX kernel=HEX", where the data pages of the two windows
 * start.  Then one result line per case:
 *   STATE rax=HEX rcx=HEX rdx=HEX src=ok|changed faults=N[ RIP:ADDR:SIG ...] dst=RUNS
 * STATE is returned, oops (a signal no extable entry covers, or not a SIGSEGV), hang (more
 * than MAX_FAULTS faults, or no return within the watchdog), unsupported (an extable type
 * the harness does not model).  RUNS encodes the whole destination window exactly, as
 * runs separated by commas: F<n> (n bytes of the 0xFF fill), S<n> (n bytes equal to the
 * source window shifted so destination buffer offset i lines up with source buffer offset
 * i, 0x00 where that falls outside the source window), O<hex> (other bytes, literally).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#define PAGE		4096
#define WINDOW_PAGES	16
#define SPAN		((WINDOW_PAGES + 2) * PAGE)	/* guard + data + guard */
#define MAX_FAULTS	256				/* as emu.core.machine.MAX_FAULTS */
#define DST_FILL	0xFF
#define WATCHDOG_US	2000000				/* of user CPU time, so load cannot trip it */

/* ---- the routines the linked object may define ------------------------------------- */

#define WEAK __attribute__((weak))
extern char copy_user_generic_unrolled[] WEAK;
extern char copy_user_generic_string[] WEAK;
extern char copy_user_enhanced_fast_string[] WEAK;
extern char __copy_user_nocache[] WEAK;
extern char rep_movs_alternative[] WEAK;
extern char copy_user_generic[] WEAK;
extern char copy_mc_fragile[] WEAK;
extern char copy_mc_enhanced_fast_string[] WEAK;
extern char __get_user_1[] WEAK, __get_user_2[] WEAK, __get_user_4[] WEAK, __get_user_8[] WEAK;
extern char __get_user_nocheck_1[] WEAK, __get_user_nocheck_2[] WEAK;
extern char __get_user_nocheck_4[] WEAK, __get_user_nocheck_8[] WEAK;

static const struct { const char *name; char *addr; } routines[] = {
	{ "copy_user_generic_unrolled", copy_user_generic_unrolled },
	{ "copy_user_generic_string", copy_user_generic_string },
	{ "copy_user_enhanced_fast_string", copy_user_enhanced_fast_string },
	{ "__copy_user_nocache", __copy_user_nocache },
	{ "rep_movs_alternative", rep_movs_alternative },
	{ "copy_user_generic", copy_user_generic },
	{ "copy_mc_fragile", copy_mc_fragile },
	{ "copy_mc_enhanced_fast_string", copy_mc_enhanced_fast_string },
	{ "__get_user_1", __get_user_1 },
	{ "__get_user_2", __get_user_2 },
	{ "__get_user_4", __get_user_4 },
	{ "__get_user_8", __get_user_8 },
	{ "__get_user_nocheck_1", __get_user_nocheck_1 },
	{ "__get_user_nocheck_2", __get_user_nocheck_2 },
	{ "__get_user_nocheck_4", __get_user_nocheck_4 },
	{ "__get_user_nocheck_8", __get_user_nocheck_8 },
};

/*
 * The handler functions the <= v5.15 encoding points at.  Each is its own ud2 so every
 * name has a distinct address; only the addresses matter (they are never called).
 */
#define HANDLER_SYM(n) \
	".globl " #n "\n.type " #n ",@function\n" #n ":\n\tud2\n.size " #n ",2\n"
__asm__(".text\n"
	HANDLER_SYM(ex_handler_default)
	HANDLER_SYM(ex_handler_fault)
	HANDLER_SYM(ex_handler_uaccess)
	HANDLER_SYM(ex_handler_copy)
	HANDLER_SYM(ex_handler_clear_fs)
	HANDLER_SYM(ex_handler_fprestore)
	HANDLER_SYM(ex_handler_wrmsr_unsafe)
	HANDLER_SYM(ex_handler_rdmsr_unsafe)
	HANDLER_SYM(ex_handler_ext)
	HANDLER_SYM(ex_handler_refcount));
extern const char ex_handler_default[], ex_handler_fault[], ex_handler_uaccess[],
	ex_handler_copy[];

/* ---- the exception table ----------------------------------------------------------- */

struct ex_entry {
	int32_t insn;	/* relative to &insn */
	int32_t fixup;	/* relative to &fixup */
	int32_t data;	/* handler (relative), type number, or data word */
};

/* ld defines these for an orphan section whose name is a C identifier. */
extern const struct ex_entry __start___ex_table[], __stop___ex_table[];

enum fix { FIX_DEFAULT, FIX_FAULT, FIX_UACCESS, FIX_IMM_REG, FIX_UCOPY_LEN, FIX_UNSUPPORTED };

static int extable_abi, ex_layout;

static uintptr_t rel(const int32_t *field)
{
	return (uintptr_t)field + (intptr_t)*field;
}

static const struct ex_entry *search_extable(uintptr_t ip)
{
	const struct ex_entry *e;

	for (e = __start___ex_table; e < __stop___ex_table; e++)
		if (rel(&e->insn) == ip)
			return e;
	return NULL;
}

/*
 * What the entry's handler does.  For a data word (v5.17+) also its register, EX_FLAG_CLEAR_*
 * bits and signed immediate.  Type numbers per layout (kernel-facts 5b): DEFAULT 1, FAULT 2,
 * UACCESS 3 everywhere; COPY 4 except in 610; DEFAULT_MCE_SAFE / FAULT_MCE_SAFE 12/13 in 516
 * and 14/15 later; IMM_REG 17 and UCOPY_LEN 19 from 517.
 */
struct fixinfo {
	enum fix fix;
	int reg, flags, imm;
};

static struct fixinfo classify(const struct ex_entry *e)
{
	struct fixinfo fi = { FIX_UNSUPPORTED, 0, 0, 0 };
	int type;

	if (extable_abi == 1) {
		const char *h = (const char *)rel(&e->data);

		if (h == ex_handler_default)
			fi.fix = FIX_DEFAULT;
		else if (h == ex_handler_fault || h == ex_handler_copy)
			fi.fix = FIX_FAULT;	/* both store the trap number in ax */
		else if (h == ex_handler_uaccess)
			fi.fix = FIX_UACCESS;
		return fi;
	}
	type = extable_abi == 2 ? e->data : (e->data & 0xff);
	if (extable_abi == 3) {
		fi.reg = (e->data >> 8) & 0xf;
		fi.flags = (e->data >> 12) & 0xf;
		fi.imm = (int16_t)((uint32_t)e->data >> 16);
	}
	if (type == 1 || type == (ex_layout == 516 ? 12 : 14))
		fi.fix = FIX_DEFAULT;
	else if (type == 2 || type == (ex_layout == 516 ? 13 : 15) || (type == 4 && ex_layout != 610))
		fi.fix = FIX_FAULT;
	else if (type == 3)
		fi.fix = FIX_UACCESS;
	else if (type == 17 && ex_layout != 516)
		fi.fix = FIX_IMM_REG;
	else if (type == 19 && ex_layout != 516)
		fi.fix = FIX_UCOPY_LEN;
	return fi;
}

/* gregs index of each register number of the data word (instruction-encoding order). */
static const int greg_of[16] = {
	REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
	REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
};

/* ---- one case's state, shared with the signal handler -------------------------------- */

enum state { ST_RETURNED, ST_OOPS, ST_HANG, ST_UNSUPPORTED };
static const char *const state_names[] = { "returned", "oops", "hang", "unsupported" };

struct fault {
	uintptr_t rip, addr;
	int sig;
};

static sigjmp_buf case_env;
static volatile sig_atomic_t in_case;
static struct fault faults[MAX_FAULTS + 1];
static volatile int nfaults;

static void on_signal(int sig, siginfo_t *si, void *ctxp)
{
	ucontext_t *uc = ctxp;
	greg_t *g = uc->uc_mcontext.gregs;
	const struct ex_entry *e;
	struct fixinfo fi;
	int trapnr;

	if (!in_case) {
		static const char msg[] = "harness: signal outside a case\n";

		(void)!write(2, msg, sizeof(msg) - 1);
		_exit(3);
	}
	if (sig == SIGVTALRM)
		siglongjmp(case_env, 1 + ST_HANG);
	if (nfaults <= MAX_FAULTS) {
		faults[nfaults].rip = (uintptr_t)g[REG_RIP];
		faults[nfaults].addr = (uintptr_t)si->si_addr;
		faults[nfaults].sig = sig;
	}
	nfaults++;
	if (sig != SIGSEGV)
		siglongjmp(case_env, 1 + ST_OOPS);
	if (nfaults > MAX_FAULTS)
		siglongjmp(case_env, 1 + ST_HANG);	/* the fixup faults again forever */
	e = search_extable((uintptr_t)g[REG_RIP]);
	if (!e)
		siglongjmp(case_env, 1 + ST_OOPS);
	fi = classify(e);
	/* A SIGSEGV from a page fault; the kernel sends SI_KERNEL for a #GP. */
	trapnr = si->si_code == SI_KERNEL ? 13 : 14;
	switch (fi.fix) {
	case FIX_IMM_REG:		/* reg := (long)imm, then as DEFAULT */
		g[greg_of[fi.reg]] = (greg_t)(long)fi.imm;
		/* fall through */
	case FIX_DEFAULT:
		if (fi.flags & 1)
			g[REG_RAX] = 0;
		if (fi.flags & 2)
			g[REG_RDX] = 0;
		break;
	case FIX_FAULT:
		g[REG_RAX] = trapnr;
		break;
	case FIX_UACCESS:
		break;
	case FIX_UCOPY_LEN:		/* cx := reg + imm * cx, then as UACCESS */
		g[REG_RCX] = g[greg_of[fi.reg]] + (greg_t)fi.imm * g[REG_RCX];
		break;
	case FIX_UNSUPPORTED:
		siglongjmp(case_env, 1 + ST_UNSUPPORTED);
	}
	g[REG_RIP] = (greg_t)rel(&e->fixup);
}

/* ---- calling a routine ------------------------------------------------------------- */

struct regs {
	uint64_t rax, rcx, rdx;
};

enum conv { CONV_RDX, CONV_RCX, CONV_RAX };

/*
 * CONV_RDX / CONV_RCX: rdi = destination, rsi = source, the count in rdx (<= v6.3 copy
 * routines, copy_mc) or rcx (rep_movs_alternative, copy_user_generic); rax starts at 0 as
 * in emu.  CONV_RAX: the get_user helpers, user address in rax and nothing else.  The
 * routines clobber only caller-saved registers; the call needs -mno-red-zone.
 */
static struct regs call_routine(char *fn, char *dst, const char *src, uint64_t len,
				enum conv conv)
{
	register uint64_t rdi __asm__("rdi") = conv == CONV_RAX ? 0 : (uintptr_t)dst;
	register uint64_t rsi __asm__("rsi") = conv == CONV_RAX ? 0 : (uintptr_t)src;
	register uint64_t rdx __asm__("rdx") = conv == CONV_RDX ? len : 0;
	register uint64_t rcx __asm__("rcx") = conv == CONV_RCX ? len : 0;
	register uint64_t rax __asm__("rax") = conv == CONV_RAX ? (uintptr_t)src : 0;
	struct regs out;

	__asm__ volatile("cld\n\tcall *%[fn]"
			 : "+r"(rdi), "+r"(rsi), "+r"(rdx), "+r"(rcx), "+r"(rax)
			 : [fn] "r"(fn)
			 : "r8", "r9", "r10", "r11", "memory", "cc");
	out.rax = rax;
	out.rcx = rcx;
	out.rdx = rdx;
	return out;
}

/* ---- buffers ----------------------------------------------------------------------- */

static unsigned char *pattern;

/* A window: PROT_NONE page, SPAN read-write bytes, PROT_NONE page.  Returns the SPAN part. */
static unsigned char *map_window(void)
{
	unsigned char *p = mmap(NULL, SPAN + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);

	if (p == MAP_FAILED || mprotect(p + PAGE, SPAN, PROT_READ | PROT_WRITE)) {
		perror("harness: mmap");
		exit(2);
	}
	return p + PAGE;
}

static void print_runs(const unsigned char *dst, const unsigned char *src, long delta)
{
	long w = 0, n;

	fputs(" dst=", stdout);
	while (w < SPAN) {
		if (w)
			putchar(',');
		if (dst[w] == DST_FILL) {
			for (n = 0; w + n < SPAN && dst[w + n] == DST_FILL; n++)
				;
			printf("F%ld", n);
		} else {
			int same = 0;

			for (n = 0; w + n < SPAN; n++) {
				long s = w + n + delta;
				unsigned char want = (s >= 0 && s < SPAN) ? src[s] : 0;

				if (dst[w + n] == DST_FILL)
					break;
				if (n == 0)
					same = dst[w] == want;
				else if ((dst[w + n] == want) != same)
					break;
			}
			if (same) {
				printf("S%ld", n);
			} else {
				putchar('O');
				for (long k = 0; k < n; k++)
					printf("%02x", dst[w + k]);
			}
		}
		w += n;
	}
}

int main(int argc, char **argv)
{
	static char line[4096];
	struct sigaction sa;
	unsigned char *uwin, *kwin;
	FILE *f;

	if (argc != 4) {
		fprintf(stderr, "usage: %s PATTERN_FILE EXTABLE_ABI EX_LAYOUT < cases\n", argv[0]);
		return 2;
	}
	extable_abi = atoi(argv[2]);
	ex_layout = atoi(argv[3]);
	pattern = malloc(SPAN);
	f = fopen(argv[1], "rb");
	if (!pattern || !f || fread(pattern, 1, SPAN, f) != SPAN) {
		fprintf(stderr, "harness: cannot read %d pattern bytes from %s\n", SPAN, argv[1]);
		return 2;
	}
	fclose(f);

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGFPE, &sa, NULL);
	sigaction(SIGTRAP, &sa, NULL);
	sigaction(SIGVTALRM, &sa, NULL);

	uwin = map_window();
	kwin = map_window();
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	/* Where the data pages of the windows start, for mapping fault addresses. */
	printf("windows user=%lx kernel=%lx\n", (unsigned long)(uwin + PAGE),
	       (unsigned long)(kwin + PAGE));

	while (fgets(line, sizeof(line), stdin)) {
		char name[64], lenreg[8], dir[8], unmapped[2048];
		unsigned long len, salign, dalign;
		unsigned char *srcw, *dstw, *user;
		unsigned long user_align;
		struct itimerval tv = { { 0, 0 }, { 0, 0 } };
		static struct regs r;
		volatile int state;
		char *fn = NULL;
		long offs[64];
		int noffs = 0, i, jr;

		if (sscanf(line, "%63s %7s %7s %lu %lu %lu %2047s", name, lenreg, dir, &len, &salign,
			   &dalign, unmapped) != 7) {
			fprintf(stderr, "harness: bad case line: %s", line);
			return 2;
		}
		for (i = 0; i < (int)(sizeof(routines) / sizeof(routines[0])); i++)
			if (!strcmp(routines[i].name, name))
				fn = routines[i].addr;
		if (!fn) {
			fprintf(stderr, "harness: the object has no routine %s\n", name);
			return 2;
		}
		if (salign + len > WINDOW_PAGES * PAGE || dalign + len > WINDOW_PAGES * PAGE) {
			fprintf(stderr, "harness: case does not fit the window: %s", line);
			return 2;
		}
		if (strcmp(unmapped, "-")) {
			char *tok, *save = NULL;

			for (tok = strtok_r(unmapped, ",", &save); tok && noffs < 64;
			     tok = strtok_r(NULL, ",", &save))
				offs[noffs++] = strtol(tok, NULL, 0);
		}

		/* 1. Windows: source pattern and 0xFF fill, guard pages included (as emu). */
		srcw = !strcmp(dir, "from") ? uwin : kwin;
		dstw = !strcmp(dir, "from") ? kwin : uwin;
		memcpy(srcw, pattern, SPAN);
		memset(dstw, DST_FILL, SPAN);
		user = !strcmp(dir, "from") ? srcw : dstw;
		user_align = !strcmp(dir, "from") ? salign : dalign;

		/* 2. Not-present user pages. */
		for (i = 0; i < noffs; i++) {
			unsigned char *pg = (unsigned char *)(((uintptr_t)(user + PAGE + user_align +
						offs[i])) & ~(uintptr_t)(PAGE - 1));
			if (mprotect(pg, PAGE, PROT_NONE)) {
				perror("harness: mprotect");
				return 2;
			}
		}

		/* 3. Run. */
		nfaults = 0;
		r.rax = r.rcx = r.rdx = 0;
		tv.it_value.tv_usec = WATCHDOG_US % 1000000;
		tv.it_value.tv_sec = WATCHDOG_US / 1000000;
		setitimer(ITIMER_VIRTUAL, &tv, NULL);
		in_case = 1;
		jr = sigsetjmp(case_env, 1);
		if (jr == 0) {
			r = call_routine(fn, (char *)dstw + PAGE + dalign,
					 (const char *)srcw + PAGE + salign, len,
					 !strcmp(lenreg, "rcx") ? CONV_RCX :
					 !strcmp(lenreg, "rax") ? CONV_RAX : CONV_RDX);
			state = ST_RETURNED;
		} else {
			state = jr - 1;
		}
		in_case = 0;
		memset(&tv, 0, sizeof(tv));
		setitimer(ITIMER_VIRTUAL, &tv, NULL);

		/* 4. Present again, so the windows can be read and reset. */
		for (i = 0; i < noffs; i++) {
			unsigned char *pg = (unsigned char *)(((uintptr_t)(user + PAGE + user_align +
						offs[i])) & ~(uintptr_t)(PAGE - 1));
			mprotect(pg, PAGE, PROT_READ | PROT_WRITE);
		}

		/* 5. Report. */
		printf("%s rax=%lx rcx=%lx rdx=%lx src=%s faults=%d", state_names[state],
		       (unsigned long)r.rax, (unsigned long)r.rcx, (unsigned long)r.rdx,
		       memcmp(srcw, pattern, SPAN) ? "changed" : "ok", nfaults);
		for (i = 0; i < nfaults && i <= MAX_FAULTS; i++)
			printf(" %lx:%lx:%d", (unsigned long)faults[i].rip,
			       (unsigned long)faults[i].addr, faults[i].sig);
		print_runs(dstw, srcw, (long)salign - (long)dalign);
		putchar('\n');
	}
	fflush(stdout);
	return 0;
}
