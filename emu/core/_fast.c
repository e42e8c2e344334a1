/* emu/core/_fast.c: the rep movs / rep stos bulk step as a Unicorn block hook in C.
 *
 * The same algorithm as emu/core/strings.py (plan, first_hit, walk_pages, sequential_copy)
 * and Machine._on_string, with no Python in the hook: the hook reads RCX, RSI, RDI, RAX and
 * EFLAGS, works out how many of the remaining iterations nothing watches, moves their bytes
 * with uc_mem_read / uc_mem_write, sets the PTEs' accessed and dirty bits, and advances RCX,
 * RSI and RDI.  The state it needs (the buffer windows, absent pages, watched lines, the
 * instructions) lives in one EmuStrings record that Python fills through ctypes
 * (emu/core/native.py mirrors the layout); Unicorn's entry points are passed in as function
 * pointers, so the library links against nothing.  tests/unit/test_strings.py runs the C and
 * the Python hooks against iteration-by-iteration execution and against each other.
 *
 * Built by emu/core/native.py with gcc -O2 -shared -fPIC into $EMU_CACHE (~/.cache/emu).
 */
#include <stdint.h>
#include <string.h>

#define PAGE 4096
#define MAX_OPS 64
#define MAX_WATCH 64
#define MAX_ABSENT 64
#define EFLAGS_DF (1u << 10)
#define EFLAGS_AC (1u << 18)
#define PTE_P 0x1u
#define PTE_A 0x20u
#define PTE_D 0x40u

typedef __int128 i128;
typedef int (*reg_batch_fn)(void *uc, int *ids, void **vals, int count);
typedef int (*mem_fn)(void *uc, uint64_t addr, void *bytes, uint64_t size);

/* Every field is 64 bits wide, in this order, so that the ctypes mirror has no padding. */
typedef struct {
    uint64_t f_reg_read_batch, f_reg_write_batch, f_mem_read, f_mem_write;
    uint64_t reg_ids[5];             /* rcx, rsi, rdi, rax, eflags */
    uint64_t active;                 /* a run is going on and has not halted */
    uint64_t win_va[2], win_pa[2], win_pte[2], win_user[2], win_pages[2];
    uint64_t nabsent, absent[MAX_ABSENT];
    uint64_t nwatch, watch_lo[MAX_WATCH], watch_hi[MAX_WATCH];
    uint64_t nops, op_addr[MAX_OPS], op_kind[MAX_OPS], op_size[MAX_OPS];   /* kind 0 movs, 1 stos */
    uint64_t buf, buf_size;          /* scratch memory Python allocated */
    uint64_t calls, bulked;          /* statistics: hook calls, iterations done in bulk */
} EmuStrings;

static i128 floordiv(i128 a, i128 b) {     /* b > 0 */
    i128 q = a / b;
    if (a % b != 0 && a < 0)
        q--;
    return q;
}

static void span(i128 base, i128 size, int down, i128 count, i128 *lo, i128 *hi) {
    if (count <= 0) { *lo = *hi = base; return; }
    if (down) { *lo = base - (count - 1) * size; *hi = base + size; }
    else { *lo = base; *hi = base + count * size; }
}

static i128 first_hit(i128 base, i128 size, int down, i128 count, i128 a, i128 b) {
    i128 i;
    if (down) {
        i = floordiv(base - b, size) + 1;
        if (i < 0) i = 0;
        return (i < count && base - i * size + size > a) ? i : count;
    }
    i = floordiv(a - base - size, size) + 1;
    if (i < 0) i = 0;
    return (i < count && base + i * size < b) ? i : count;
}

/* The window holding page, or -1. */
static int window_of(const EmuStrings *s, i128 page) {
    for (int w = 0; w < 2; w++) {
        i128 lo = (i128)s->win_va[w];
        if (page >= lo && page < lo + (i128)s->win_pages[w] * PAGE)
            return w;
    }
    return -1;
}

static int allowed(const EmuStrings *s, i128 page, int ac) {
    int w = window_of(s, page);
    if (w < 0)
        return 0;
    for (uint64_t j = 0; j < s->nabsent; j++)
        if ((i128)s->absent[j] == page)
            return 0;
    return ac || !s->win_user[w];
}

static i128 walk_pages(const EmuStrings *s, i128 base, i128 size, int down, i128 count, int ac) {
    i128 lo, hi, page;
    span(base, size, down, count, &lo, &hi);
    if (down) {
        for (page = floordiv(hi - 1, PAGE) * PAGE; page + PAGE > lo; page -= PAGE)
            if (!allowed(s, page, ac))
                return first_hit(base, size, down, count, page, page + PAGE);
    } else {
        for (page = floordiv(lo, PAGE) * PAGE; page < hi; page += PAGE)
            if (!allowed(s, page, ac))
                return first_hit(base, size, down, count, page, page + PAGE);
    }
    return count;
}

static void sequential_copy(uint8_t *mem, i128 src, i128 dst, i128 count, i128 size, int down) {
    i128 d = dst - src, ad = d < 0 ? -d : d, per, done = 0;
    int leads = down ? d < 0 : d > 0;
    per = (!leads || ad >= count * size) ? count : (ad / size > 1 ? ad / size : 1);
    while (done < count) {
        i128 n = per < count - done ? per : count - done, s0, d0;
        if (down) { s0 = src - (done + n - 1) * size; d0 = dst - (done + n - 1) * size; }
        else { s0 = src + done * size; d0 = dst + done * size; }
        memmove(mem + (size_t)d0, mem + (size_t)s0, (size_t)(n * size));
        done += n;
    }
}

/* Physical address of a virtual address in window w. */
static uint64_t pa_of(const EmuStrings *s, int w, i128 va) {
    return s->win_pa[w] + (uint64_t)(va - (i128)s->win_va[w]);
}

static void touch(const EmuStrings *s, void *uc, i128 lo, i128 hi, uint64_t bits) {
    uint64_t ptes[MAX_ABSENT];
    i128 first = floordiv(lo, PAGE) * PAGE;
    int w = window_of(s, first);
    uint64_t n = (uint64_t)((floordiv(hi - 1, PAGE) * PAGE - first) / PAGE + 1), i, changed = 0;
    uint64_t at = s->win_pte[w] + 8 * (uint64_t)((first - (i128)s->win_va[w]) / PAGE);
    if (n > MAX_ABSENT)
        n = MAX_ABSENT;                  /* cannot happen: a window has fewer pages */
    ((mem_fn)s->f_mem_read)(uc, at, ptes, 8 * n);
    for (i = 0; i < n; i++) {
        if ((ptes[i] & bits) != bits) { ptes[i] |= bits; changed = 1; }
    }
    if (changed)
        ((mem_fn)s->f_mem_write)(uc, at, ptes, 8 * n);
}

void emu_string_hook(void *uc, uint64_t address, uint32_t insn_size, void *user_data) {
    EmuStrings *s = (EmuStrings *)user_data;
    uint64_t v[5];
    void *pv[5] = {&v[0], &v[1], &v[2], &v[3], &v[4]};
    int ids[5];
    uint64_t j, kind = 0, size = 0;
    int found = 0, down, ac;
    i128 k, rcx, rsi, rdi, wlo, whi, rlo, rhi, step;
    uint8_t *buf = (uint8_t *)(uintptr_t)s->buf;
    (void)insn_size;
    s->calls++;
    if (!s->active)
        return;
    for (j = 0; j < s->nops; j++)
        if (s->op_addr[j] == address) { kind = s->op_kind[j]; size = s->op_size[j]; found = 1; break; }
    if (!found)
        return;
    /* 1. registers */
    for (j = 0; j < 5; j++)
        ids[j] = (int)s->reg_ids[j];
    ((reg_batch_fn)s->f_reg_read_batch)(uc, ids, pv, 5);
    if (v[0] == 0)
        return;
    rcx = v[0]; rsi = v[1]; rdi = v[2];
    down = (v[4] & EFLAGS_DF) != 0;
    ac = (v[4] & EFLAGS_AC) != 0;
    /* 2. plan */
    k = walk_pages(s, rdi, size, down, rcx, ac);
    if (kind == 0 && k) {
        k = walk_pages(s, rsi, size, down, k, ac);
        for (j = 0; j < s->nwatch && k; j++)
            k = first_hit(rsi, size, down, k, s->watch_lo[j], s->watch_hi[j]);
    }
    if (!k)
        return;
    /* 3. move the bytes, mark the PTEs, advance the registers */
    span(rdi, size, down, k, &wlo, &whi);
    if ((uint64_t)(whi - wlo) > s->buf_size)
        return;                          /* cannot happen: a span stays inside one window */
    int ww = window_of(s, floordiv(wlo, PAGE) * PAGE);
    if (kind == 1) {
        uint64_t pat = v[3];
        for (i128 i = 0; i < k; i++)
            memcpy(buf + (size_t)(i * size), &pat, size);
        ((mem_fn)s->f_mem_write)(uc, pa_of(s, ww, wlo), buf, (uint64_t)(whi - wlo));
    } else {
        span(rsi, size, down, k, &rlo, &rhi);
        int rw = window_of(s, floordiv(rlo, PAGE) * PAGE);
        if (rhi <= wlo || whi <= rlo) {
            ((mem_fn)s->f_mem_read)(uc, pa_of(s, rw, rlo), buf, (uint64_t)(rhi - rlo));
            ((mem_fn)s->f_mem_write)(uc, pa_of(s, ww, wlo), buf, (uint64_t)(whi - wlo));
        } else {                         /* overlapping, so in one window: element order matters */
            i128 ulo = rlo < wlo ? rlo : wlo, uhi = rhi > whi ? rhi : whi;
            if ((uint64_t)(uhi - ulo) > s->buf_size)
                return;
            ((mem_fn)s->f_mem_read)(uc, pa_of(s, rw, ulo), buf, (uint64_t)(uhi - ulo));
            sequential_copy(buf, rsi - ulo, rdi - ulo, k, size, down);
            ((mem_fn)s->f_mem_write)(uc, pa_of(s, ww, wlo), buf + (size_t)(wlo - ulo),
                                     (uint64_t)(whi - wlo));
        }
        touch(s, uc, rlo, rhi, PTE_A);
    }
    touch(s, uc, wlo, whi, PTE_A | PTE_D);
    step = down ? -k * (i128)size : k * (i128)size;
    v[0] = (uint64_t)(rcx - k);
    v[1] = kind == 0 ? (uint64_t)(rsi + step) : (uint64_t)rsi;
    v[2] = (uint64_t)(rdi + step);
    ((reg_batch_fn)s->f_reg_write_batch)(uc, ids, pv, 3);
    s->bulked += (uint64_t)k;
}

/* ---- the per-case harness: Machine.run around emu_start, and the fault hooks -------------
 *
 * emu/core/fastpath.py drives this part (the Python path of Machine.run is the reference
 * and the fallback; tests/unit/test_fastpath.py runs both on the same cases).  One EmuRun
 * record per machine holds Unicorn's entry points, the windows, the pages the last run left
 * changed (the "resident" pages), the poison hooks and a memo of the fault policy; a case is
 * described by three small records Python caches (the call's entry registers, the buffers'
 * layout, the poisoned lines) and an optional start checkpoint.
 *
 * Faults: the #MC read hook and the #PF interrupt hook look the fault up in the memo, keyed by
 * (rip, kind) and by whether the memory operand the handler depends on is a user address.  A
 * hit is applied here (registers, RIP, QEMU's exception state, or a halt) and recorded; a miss,
 * and every fault the memo does not model, goes to Python (py_defer), which asks the handler,
 * applies its answer as before and may fill the memo.
 */

#define WMAX 32                          /* pages per window (the machine has 18) */
#define MAX_LINES 16
#define MAX_ENTRY 16
#define NSNAP 10
#define NFAULT (2 + NSNAP)               /* rip, cr2, the snapshot */
#define NRESULT 12
#define MAX_FAULTS 256
#define REC_W 16                         /* words per fault record */
#define MAX_MEMO 512                     /* memo slots (a power of two) */
#define MEMO_REGS 8

enum { K_PF = 0, K_MC = 1, K_GP = 2, K_UD = 3, K_TRAP = 4 };
enum { DEFER_READ = 0, DEFER_INTR = 1 };

typedef int (*reg1_fn)(void *uc, int regid, void *value);
typedef int (*ctx_fn)(void *uc, void *ctx);
typedef int (*start_fn)(void *uc, uint64_t begin, uint64_t until, uint64_t timeout, size_t count);
typedef int (*stop_fn)(void *uc);
typedef int (*hook_add_fn)(void *uc, size_t *hh, int type, void *callback, void *user_data,
                           uint64_t begin, uint64_t end, ...);
typedef int (*hook_del_fn)(void *uc, size_t hh);
typedef void (*defer_fn)(uint64_t what, uint64_t a, uint64_t b, uint64_t c);

/* One memo slot: faults of one kind at one instruction.  The resolution depends on nothing
 * else, or (op_type 1) also on whether base + index * scale + disp is a user address. */
typedef struct {
    uint64_t used, rip, kind;
    uint64_t op_type, op_base, op_index, op_scale, op_disp;   /* register ids; 0: none */
    uint64_t valid[2], halt[2], res[2], new_rip[2], nregs[2];
    uint64_t ids[2][MEMO_REGS], vals[2][MEMO_REGS];
} Memo;

typedef struct {                         /* a call: where it starts and its registers */
    uint64_t begin, nregs, ids[MAX_ENTRY], vals[MAX_ENTRY];
} EmuCall;

typedef struct {                         /* the buffers: which window is the source, the
                                          * non-present pages, the pages kept dirty */
    uint64_t src_win, nabsent, absent[MAX_ABSENT], keep_lo[2], keep_hi[2];
} EmuLayout;

typedef struct {                         /* poisoned lines (physical, sorted; virtual) */
    uint64_t nlines, pa[MAX_LINES], va[MAX_LINES];
} EmuLines;

typedef struct {                         /* a checkpoint: context, RIP, stack, pages */
    uint64_t ctx, rip, stack, npages, win[2 * WMAX], idx[2 * WMAX], ptr[2 * WMAX];
} EmuStart;

typedef struct {
    uint64_t uc;
    uint64_t f_reg_read, f_reg_write, f_reg_read_batch, f_reg_write_batch, f_mem_read,
             f_mem_write, f_emu_start, f_emu_stop, f_ctx_save, f_ctx_restore, f_hook_add,
             f_hook_del;
    uint64_t py_defer, strings;          /* defer_fn; EmuStrings * or 0 */
    uint64_t fault_ids[NFAULT], result_ids[NRESULT];
    uint64_t rip_id, cr3_id, pml4, hook_read, task_size;
    uint64_t ctx0, exc_ctx, ctx_size, exc_off;     /* exc_off 0: not located yet */
    uint64_t win_va[2], win_pa[2], win_pte[2], win_flags[2], npages;
    uint64_t init_src, init_dst;         /* the windows' initial contents */
    uint64_t stack_pa, ret_pa, sentinel;
    uint64_t cbuf;                       /* 2 * WMAX pages: contents read back after a run */
    uint64_t res_state[2][WMAX];         /* 0 initial, 1 the bytes at res_ptr, 2 cbuf's */
    uint64_t res_ptr[2][WMAX];
    uint64_t pte_known[2], pte_last[2][WMAX];
    uint64_t nhooks, hook_h[MAX_LINES], hook_pa[MAX_LINES];
    uint64_t line_ud[MAX_LINES][3];      /* read hook user data: run, line pa, line va */
    uint64_t lines;                      /* EmuLines * of the run */
    uint64_t layout;                     /* EmuLayout * of the run */
    /* the run */
    uint64_t active, halted, halt_res, ntotal, nrec, deferred;
    uint64_t status, result[NRESULT], ndirty, dirty[2 * WMAX];
    uint64_t rec[(MAX_FAULTS + 1) * REC_W];
    Memo memo[MAX_MEMO];
    uint64_t memo_hits, memo_misses;
} EmuRun;

static uint64_t memo_hash(uint64_t rip, uint64_t kind) {
    uint64_t h = (rip ^ (kind << 59)) * 0x9E3779B97F4A7C15ull;
    return h >> 55;                      /* 9 bits: MAX_MEMO */
}

static Memo *memo_find(EmuRun *r, uint64_t rip, uint64_t kind) {
    uint64_t h = memo_hash(rip, kind);
    for (uint64_t n = 0; n < MAX_MEMO; n++) {
        Memo *m = &r->memo[(h + n) & (MAX_MEMO - 1)];
        if (!m->used)
            return 0;
        if (m->rip == rip && m->kind == kind)
            return m;
    }
    return 0;
}

/* The slot for (rip, kind), made if missing (Python fills it); 0 when the table is full. */
Memo *emu_memo_slot(EmuRun *r, uint64_t rip, uint64_t kind) {
    uint64_t h = memo_hash(rip, kind);
    for (uint64_t n = 0; n < MAX_MEMO - 1; n++) {   /* one slot stays empty: lookups end */
        Memo *m = &r->memo[(h + n) & (MAX_MEMO - 1)];
        if (!m->used) {
            memset(m, 0, sizeof *m);
            m->used = 1; m->rip = rip; m->kind = kind;
            return m;
        }
        if (m->rip == rip && m->kind == kind)
            return m;
    }
    return 0;
}

void emu_memo_clear(EmuRun *r) {
    memset(r->memo, 0, sizeof r->memo);
}

static void defer(EmuRun *r, uint64_t what, uint64_t a, uint64_t b, uint64_t c) {
    r->deferred++;
    ((defer_fn)r->py_defer)(what, a, b, c);
}

static void strings_off(EmuRun *r) {
    if (r->strings)
        ((EmuStrings *)(uintptr_t)r->strings)->active = 0;
}

/* Where QEMU keeps old_exception in a saved context (Machine._end_exception): located once,
 * inside the first #PF hook, as the one 4-byte field that is -1 in the initial context and
 * the vector now.  0: it cannot be located (then Python's path raises the error). */
static int locate_exception(EmuRun *r, void *uc, int32_t vector) {
    uint8_t *ctx = (uint8_t *)(uintptr_t)r->exc_ctx;
    const uint8_t *init = (const uint8_t *)(uintptr_t)r->ctx0;
    uint64_t hits = 0, at = 0;
    if (r->exc_off)
        return 1;
    ((ctx_fn)r->f_ctx_save)(uc, ctx);
    for (uint64_t off = 0; off + 4 <= r->ctx_size; off += 4) {
        int32_t a, b;
        memcpy(&a, init + off, 4);
        memcpy(&b, ctx + off, 4);
        if (a == -1 && b == vector) { hits++; at = off; }
    }
    if (hits != 1 || at == 0)
        return 0;
    r->exc_off = at;
    return 1;
}

/* Mark the redirected exception delivered: old_exception back to -1. */
static void end_exception(EmuRun *r, void *uc) {
    uint8_t *ctx = (uint8_t *)(uintptr_t)r->exc_ctx;
    ((ctx_fn)r->f_ctx_save)(uc, ctx);
    memset(ctx + r->exc_off, 0xFF, 4);
    ((ctx_fn)r->f_ctx_restore)(uc, ctx);
}

/* Apply the memo to a fault, or hand it to Python. */
static void dispatch(EmuRun *r, void *uc, int kind, uint64_t rip, uint64_t addr, int user,
                     const uint64_t *v, uint64_t what, uint64_t a, uint64_t b, uint64_t c) {
    Memo *m;
    int bit = 0;
    uint64_t *rec;
    if (r->ntotal >= MAX_FAULTS || r->nrec >= MAX_FAULTS)
        goto miss;
    m = memo_find(r, rip, (uint64_t)kind);
    if (!m)
        goto miss;
    if (m->op_type) {
        uint64_t ea = m->op_disp, x = 0;
        if (m->op_base) { ((reg1_fn)r->f_reg_read)(uc, (int)m->op_base, &x); ea += x; }
        if (m->op_index) { ((reg1_fn)r->f_reg_read)(uc, (int)m->op_index, &x); ea += x * m->op_scale; }
        bit = ea < r->task_size;
    }
    if (!m->valid[bit])
        goto miss;
    if (kind == K_PF && !m->halt[bit] && !locate_exception(r, uc, 14))
        goto miss;                       /* Python's path says why (an EmulationError) */
    r->memo_hits++;
    rec = &r->rec[r->nrec * REC_W];
    rec[0] = (uint64_t)kind; rec[1] = rip; rec[2] = addr; rec[3] = (uint64_t)user;
    rec[4] = m->res[bit];
    memcpy(rec + 5, v + 2, NSNAP * sizeof(uint64_t));
    r->nrec++;
    r->ntotal++;
    if (m->halt[bit]) {
        r->halted = 1;
        r->halt_res = m->res[bit];
        strings_off(r);
        ((stop_fn)r->f_emu_stop)(uc);
        return;
    }
    if (m->nregs[bit]) {
        int ids[MEMO_REGS];
        void *pv[MEMO_REGS];
        for (uint64_t j = 0; j < m->nregs[bit]; j++) {
            ids[j] = (int)m->ids[bit][j];
            pv[j] = &m->vals[bit][j];
        }
        ((reg_batch_fn)r->f_reg_write_batch)(uc, ids, pv, (int)m->nregs[bit]);
    }
    /* RIP on its own: only uc_reg_write ends the translated block at the new PC */
    ((reg1_fn)r->f_reg_write)(uc, (int)r->rip_id, &m->new_rip[bit]);
    if (kind == K_PF)
        end_exception(r, uc);
    return;
miss:
    r->memo_misses++;
    defer(r, what, a, b, c);
}

static int line_poisoned(const EmuRun *r, uint64_t pa) {
    const EmuLines *ls = (const EmuLines *)(uintptr_t)r->lines;
    for (uint64_t j = 0; j < ls->nlines; j++)
        if (ls->pa[j] == pa)
            return 1;
    return 0;
}

void emu_read_hook(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud) {
    uint64_t *lu = (uint64_t *)ud;
    EmuRun *r = (EmuRun *)(uintptr_t)lu[0];
    uint64_t line = lu[1], first, v[NFAULT] = {0}, va;   /* EFLAGS is read as 32 bits */
    int ids[NFAULT];
    void *pv[NFAULT];
    (void)type; (void)value;
    if (!(addr < line + 64 && addr + (uint64_t)size > line))
        return;
    if (!r->active || r->halted)
        return;
    /* an access over two poisoned lines is reported by the lower line's hook only */
    first = addr & ~(uint64_t)63;
    if (!line_poisoned(r, first))
        first += 64;
    if (line != first)
        return;
    for (int j = 0; j < NFAULT; j++) { ids[j] = (int)r->fault_ids[j]; pv[j] = &v[j]; }
    ((reg_batch_fn)r->f_reg_read_batch)(uc, ids, pv, NFAULT);
    va = lu[2] + (addr > line ? addr - line : 0);
    dispatch(r, uc, K_MC, v[0], va, va < r->task_size, v, DEFER_READ, addr, (uint64_t)size, line);
}

static int page_absent(const EmuRun *r, uint64_t page) {
    const EmuLayout *lay = (const EmuLayout *)(uintptr_t)r->layout;
    for (uint64_t j = 0; j < lay->nabsent; j++)
        if (lay->absent[j] == page)
            return 1;
    return 0;
}

void emu_intr_hook(void *uc, uint32_t intno, void *ud) {
    EmuRun *r = (EmuRun *)ud;
    uint64_t v[NFAULT] = {0}, addr;   /* EFLAGS is read as 32 bits */
    int ids[NFAULT];
    void *pv[NFAULT];
    if (!r->active) {                    /* the Python path is running: its hook decides */
        ((defer_fn)r->py_defer)(DEFER_INTR, intno, 0, 0);
        return;
    }
    if (r->halted) {
        ((stop_fn)r->f_emu_stop)(uc);
        return;
    }
    if (intno != 14) {
        defer(r, DEFER_INTR, intno, 0, 0);
        return;
    }
    for (int j = 0; j < NFAULT; j++) { ids[j] = (int)r->fault_ids[j]; pv[j] = &v[j]; }
    ((reg_batch_fn)r->f_reg_read_batch)(uc, ids, pv, NFAULT);
    addr = v[1];
    /* only the #PF of a page the case made non-present; the rest (SMAP, ...) is Python's */
    if (!page_absent(r, addr & ~(uint64_t)0xFFF)) {
        defer(r, DEFER_INTR, intno, 0, 0);
        return;
    }
    dispatch(r, uc, K_PF, v[0], addr, addr < r->task_size, v, DEFER_INTR, intno, 0, 0);
}

static uint8_t *cbuf_page(const EmuRun *r, int w, uint64_t i) {
    return (uint8_t *)(uintptr_t)r->cbuf + ((uint64_t)w * WMAX + i) * PAGE;
}

static const uint8_t *initial_page(const EmuRun *r, const EmuLayout *lay, int w, uint64_t i) {
    uint64_t base = (uint64_t)w == lay->src_win ? r->init_src : r->init_dst;
    return (const uint8_t *)(uintptr_t)base + i * PAGE;
}

/* The poison hooks of lines ls (one read hook per line over [line-7, line+63]). */
static void set_hooks(EmuRun *r, void *uc, const EmuLines *ls) {
    uint64_t j;
    int same = r->nhooks == ls->nlines;
    for (j = 0; same && j < ls->nlines; j++)
        same = r->hook_pa[j] == ls->pa[j];
    if (same) {
        for (j = 0; j < ls->nlines; j++)
            r->line_ud[j][2] = ls->va[j];
        return;
    }
    for (j = 0; j < r->nhooks; j++)
        ((hook_del_fn)r->f_hook_del)(uc, (size_t)r->hook_h[j]);
    r->nhooks = 0;
    for (j = 0; j < ls->nlines && j < MAX_LINES; j++) {
        size_t h = 0;
        r->line_ud[j][0] = (uint64_t)(uintptr_t)r;
        r->line_ud[j][1] = ls->pa[j];
        r->line_ud[j][2] = ls->va[j];
        ((hook_add_fn)r->f_hook_add)(uc, &h, (int)r->hook_read, (void *)emu_read_hook,
                                     (void *)r->line_ud[j], ls->pa[j] - 7, ls->pa[j] + 63);
        r->hook_h[j] = h;
        r->hook_pa[j] = ls->pa[j];
        r->nhooks = j + 1;
    }
}

/* Remove the poison hooks (before the Python path runs with its own). */
void emu_drop_hooks(EmuRun *r) {
    for (uint64_t j = 0; j < r->nhooks; j++)
        ((hook_del_fn)r->f_hook_del)((void *)(uintptr_t)r->uc, (size_t)r->hook_h[j]);
    r->nhooks = 0;
}

/* After a failed run: every window page back to its initial contents, nothing known. */
void emu_reset_windows(EmuRun *r, const EmuLayout *lay) {
    void *uc = (void *)(uintptr_t)r->uc;
    uint64_t ptes[WMAX];
    for (int w = 0; w < 2; w++) {
        ((mem_fn)r->f_mem_read)(uc, r->win_pte[w], ptes, 8 * r->npages);
        for (uint64_t i = 0; i < r->npages; i++) {
            if (r->res_state[w][i] || (ptes[i] & PTE_D))
                ((mem_fn)r->f_mem_write)(uc, r->win_pa[w] + i * PAGE,
                                         (void *)initial_page(r, lay, w, i), PAGE);
            r->res_state[w][i] = 0;
        }
        r->pte_known[w] = 0;
    }
}

/* One case: Machine.run steps 1-7 around emu_start (the windows' layout is Python's). */
int emu_run_case(EmuRun *r, const EmuCall *call, const EmuLayout *lay, const EmuLines *ls,
                 const EmuStart *start, uint64_t budget) {
    void *uc = (void *)(uintptr_t)r->uc;
    uint64_t ptes[WMAX], i, begin;
    int w, flush = 0, ids[NRESULT > MAX_ENTRY ? NRESULT : MAX_ENTRY];
    void *pv[NRESULT > MAX_ENTRY ? NRESULT : MAX_ENTRY];
    uint8_t want[2][WMAX];
    uint64_t want_ptr[2][WMAX];
    EmuStrings *st = (EmuStrings *)(uintptr_t)r->strings;

    ((ctx_fn)r->f_ctx_restore)(uc, (void *)(uintptr_t)(start ? start->ctx : r->ctx0));
    /* 2. page tables: present bits, dirty bits kept on the destination's pages */
    for (w = 0; w < 2; w++) {
        for (i = 0; i < r->npages; i++) {
            uint64_t va = r->win_va[w] + i * PAGE, e = (r->win_pa[w] + i * PAGE) | r->win_flags[w];
            int absent = 0;
            for (uint64_t j = 0; j < lay->nabsent; j++)
                if (lay->absent[j] == va) { absent = 1; break; }
            if (!absent) e |= PTE_P;
            if (lay->keep_lo[w] <= i && i < lay->keep_hi[w]) e |= PTE_A | PTE_D;
            ptes[i] = e;
        }
        if (!r->pte_known[w] || memcmp(ptes, r->pte_last[w], 8 * r->npages) != 0) {
            ((mem_fn)r->f_mem_write)(uc, r->win_pte[w], ptes, 8 * r->npages);
            memcpy(r->pte_last[w], ptes, 8 * r->npages);
            r->pte_known[w] = 1;
            flush = 1;
        }
    }
    /* 3. poison hooks */
    r->lines = (uint64_t)(uintptr_t)ls;
    r->layout = (uint64_t)(uintptr_t)lay;
    set_hooks(r, uc, ls);
    /* 4. window pages as the start needs them, CR3, registers, return address or stack */
    memset(want, 0, sizeof want);
    if (start) {
        for (i = 0; i < start->npages; i++) {
            want[start->win[i]][start->idx[i]] = 1;
            want_ptr[start->win[i]][start->idx[i]] = start->ptr[i];
        }
    }
    for (w = 0; w < 2; w++) {
        for (i = 0; i < r->npages; i++) {
            uint64_t s = r->res_state[w][i];
            if (want[w][i]) {
                const uint8_t *p = (const uint8_t *)(uintptr_t)want_ptr[w][i];
                int same = (s == 1 && (r->res_ptr[w][i] == want_ptr[w][i]
                                       || memcmp((void *)(uintptr_t)r->res_ptr[w][i], p, PAGE) == 0))
                           || (s == 2 && memcmp(cbuf_page(r, w, i), p, PAGE) == 0);
                if (!same)
                    ((mem_fn)r->f_mem_write)(uc, r->win_pa[w] + i * PAGE, (void *)p, PAGE);
                r->res_state[w][i] = 1;
                r->res_ptr[w][i] = want_ptr[w][i];
            } else if (s) {
                ((mem_fn)r->f_mem_write)(uc, r->win_pa[w] + i * PAGE,
                                         (void *)initial_page(r, lay, w, i), PAGE);
                r->res_state[w][i] = 0;
            }
        }
    }
    if (flush)
        ((reg1_fn)r->f_reg_write)(uc, (int)r->cr3_id, &r->pml4);
    if (!start) {
        ((mem_fn)r->f_mem_write)(uc, r->ret_pa, &r->sentinel, 8);
        for (i = 0; i < call->nregs; i++) { ids[i] = (int)call->ids[i]; pv[i] = (void *)&call->vals[i]; }
        ((reg_batch_fn)r->f_reg_write_batch)(uc, ids, pv, (int)call->nregs);
        begin = call->begin;
    } else {
        ((mem_fn)r->f_mem_write)(uc, r->stack_pa, (void *)(uintptr_t)start->stack, PAGE);
        begin = start->rip;
    }
    if (st) {                            /* Machine._native_sync: absent pages, watched lines */
        st->nabsent = lay->nabsent;
        memcpy(st->absent, lay->absent, lay->nabsent * sizeof(uint64_t));
        st->nwatch = ls->nlines;
        for (i = 0; i < ls->nlines; i++) { st->watch_lo[i] = ls->va[i]; st->watch_hi[i] = ls->va[i] + 64; }
        st->active = 1;
    }
    r->active = 1; r->halted = 0; r->halt_res = 0; r->ntotal = 0; r->nrec = 0; r->deferred = 0;
    /* 5. run */
    r->status = (uint64_t)((start_fn)r->f_emu_start)(uc, begin, r->sentinel, 0, (size_t)budget);
    r->active = 0;
    strings_off(r);
    /* 6. the result registers */
    for (i = 0; i < NRESULT; i++) { ids[i] = (int)r->result_ids[i]; pv[i] = &r->result[i]; }
    ((reg_batch_fn)r->f_reg_read_batch)(uc, ids, pv, NRESULT);
    /* 7. pages the CPU marked dirty: read back; a dirty page outside keep needs the PTEs
     *    rewritten before the next run */
    r->ndirty = 0;
    for (w = 0; w < 2; w++) {
        ((mem_fn)r->f_mem_read)(uc, r->win_pte[w], ptes, 8 * r->npages);
        for (i = 0; i < r->npages; i++) {
            if (!(ptes[i] & PTE_D))
                continue;
            ((mem_fn)r->f_mem_read)(uc, r->win_pa[w] + i * PAGE, cbuf_page(r, w, i), PAGE);
            r->res_state[w][i] = 2;
            r->dirty[r->ndirty++] = (uint64_t)w * WMAX + i;
            if (!(lay->keep_lo[w] <= i && i < lay->keep_hi[w]))
                r->pte_known[w] = 0;
        }
    }
    return (int)r->status;
}

/* sizeof of the records fastpath.py mirrors (it checks them when it loads the library). */
uint64_t emu_run_sizes(uint64_t which) {
    switch (which) {
    case 0: return sizeof(EmuRun);
    case 1: return sizeof(EmuCall);
    case 2: return sizeof(EmuLayout);
    case 3: return sizeof(EmuLines);
    case 4: return sizeof(EmuStart);
    case 5: return sizeof(Memo);
    default: return 0;
    }
}

/* ---- byte facts for the outcome (emu/kernel/outcome.py, ``measure``) -------------------- */

#define CHUNK 64

#define BLOCK 4096

/* First position in [lo, hi) where a and b differ, or hi (whole blocks compared first). */
static uint64_t first_diff(const uint8_t *a, const uint8_t *b, uint64_t lo, uint64_t hi) {
    while (lo + BLOCK <= hi && memcmp(a + lo, b + lo, BLOCK) == 0)
        lo += BLOCK;
    while (lo + CHUNK <= hi && memcmp(a + lo, b + lo, CHUNK) == 0)
        lo += CHUNK;
    while (lo < hi && a[lo] == b[lo])
        lo++;
    return lo;
}

/* One past the last position in [lo, hi) where a and b differ, or lo. */
static uint64_t last_diff(const uint8_t *a, const uint8_t *b, uint64_t lo, uint64_t hi) {
    while (hi >= lo + BLOCK && memcmp(a + hi - BLOCK, b + hi - BLOCK, BLOCK) == 0)
        hi -= BLOCK;
    while (hi >= lo + CHUNK && memcmp(a + hi - CHUNK, b + hi - CHUNK, CHUNK) == 0)
        hi -= CHUNK;
    while (hi > lo && a[hi - 1] == b[hi - 1])
        hi--;
    return hi;
}

static uint64_t count_diff(const uint8_t *a, const uint8_t *b, uint64_t lo, uint64_t hi) {
    uint64_t n = 0;
    lo = first_diff(a, b, lo, hi);
    hi = last_diff(a, b, lo, hi);
    for (; lo < hi; lo++)
        n += a[lo] != b[lo];
    return n;
}

/* out[0]: the common prefix of dst and src (len bytes each, len <= 2^31 - 1: the ints are
 * passed without ctypes argtypes); out[1]: how many bytes of dst
 * from there differ from fill; when 0 <= reported <= n, out[2], out[3]: [first, last+1) of
 * the positions at or after reported where dst differs from fill (n, n: none), and out[4]:
 * 1 if every byte there that differs from fill holds the source's byte. */
void emu_measure(const uint8_t *dst, const uint8_t *src, const uint8_t *fill, int32_t len,
                 int32_t reported, uint64_t *out) {
    uint64_t n = (uint64_t)len, copied = first_diff(dst, src, 0, n), lo, hi, i;
    out[0] = copied;
    out[1] = count_diff(dst, fill, copied, n);
    out[2] = out[3] = n;
    out[4] = 1;
    if (reported < 0 || (uint64_t)reported > n)
        return;
    lo = first_diff(dst, fill, (uint64_t)reported, n);
    if (lo == n)
        return;
    hi = last_diff(dst, fill, lo, n);
    out[2] = lo;
    out[3] = hi;
    for (i = lo; i < hi; i++)
        if (dst[i] != fill[i] && dst[i] != src[i]) { out[4] = 0; break; }
}
