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
