/*
 * biper bit kernels: sign-bit packing, bit im2col and XNOR-popcount GEMM.
 *
 * Compiled lazily by biper/deploy/kernels.py with the system C compiler (-O3 -fopenmp
 * -ffp-contract=off, never -march=native) and called through ctypes on tensor data pointers.
 * One binary carries three variants of the GEMM; the best one the running CPU supports is
 * chosen at run time with __builtin_cpu_supports:
 *
 *   2  AVX-512F + VPOPCNTDQ   vpopcntq on 8 channels per vector, 4 rows x 32 channels in registers
 *   1  AVX2                   nibble-LUT popcount (vpshufb, byte counters), 2 rows x 16 channels
 *   0  portable C             __builtin_popcountll (the POPCNT instruction on x86 that has it)
 *
 * Conventions shared with the Python side (biper/deploy/bitpack.py):
 *   bit = (x < 0), i.e. +1 -> 0 and -1 -> 1 (so 0.0 and -0.0 are +1);
 *   bit j of 64-bit word w holds element 64*w + j; unused high bits of the last word are 0;
 *   a dot product of K packed +-1 values is K - 2 * popcount(a XOR w).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BIPER_PORTABLE_ONLY)
#define BIPER_X86 1
#include <immintrin.h>
#define T256 __attribute__((target("avx2")))
#define AI inline __attribute__((always_inline))
#endif

#define BIPER_ABI 5
#define MIN(a, b) ((a) < (b) ? (a) : (b))
/* Work below which a call stays on the calling thread: a parallel region costs microseconds
 * when the machine is idle and up to a scheduler time slice when another process holds a core,
 * so only work worth ~100 us or more is split (floats packed / words copied / word pairs). */
#define PAR_PACK (1 << 20)
#define PAR_GEMM (1 << 20)
#define MAX(a, b) ((a) > (b) ? (a) : (b))

int biper_abi(void) { return BIPER_ABI; }

int biper_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Highest ISA level of this CPU that this binary was built with. */
int biper_cpu_isa(void) {
#ifdef BIPER_X86
    __builtin_cpu_init();
#ifndef BIPER_NO_AVX512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return 2;
#endif
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

static int g_isa = -1;

/* Cap the ISA used (for tests and benchmarks); returns the level now in use. */
int biper_set_isa(int cap) {
    int best = biper_cpu_isa();
    g_isa = cap < 0 ? best : MIN(cap, best);
    return g_isa;
}

int biper_get_isa(void) {
    if (g_isa < 0) g_isa = biper_cpu_isa();
    return g_isa;
}

#include "bitkernels_pack.h" /* packers: portable, AVX-512, AVX2 */

/* ----------------------------------------------------------------------------------------
 * Bit im2col: x (B, H, W, CW) words -> out (B*OH*OW, KH*KW*CW), tap-major (i, j) then word.
 * Taps outside the input take the CW words of `fill` (the padding value's bits).
 * ---------------------------------------------------------------------------------------- */
void biper_im2col(const uint64_t *x, int64_t B, int64_t H, int64_t W, int64_t CW,
                  int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                  int64_t DH, int64_t DW, int64_t OH, int64_t OW, const uint64_t *fill,
                  uint64_t *out, int nthreads) {
    const int64_t rowlen = KH * KW * CW, nrow = B * OH;
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nrow * OW * rowlen > PAR_PACK)
    for (int64_t bo = 0; bo < nrow; ++bo) { /* one output row (b, oh) */
        const int64_t b = bo / OH, oh = bo % OH;
        uint64_t *dst = out + bo * OW * rowlen;
        for (int64_t ow = 0; ow < OW; ++ow) {
            for (int64_t i = 0; i < KH; ++i) {
                const int64_t ih = oh * SH - PH + i * DH;
                const int row_in = ih >= 0 && ih < H;
                for (int64_t j = 0; j < KW; ++j) {
                    const int64_t iw = ow * SW - PW + j * DW;
                    const uint64_t *src = (row_in && iw >= 0 && iw < W)
                                              ? x + ((b * H + ih) * W + iw) * CW : fill;
                    for (int64_t w = 0; w < CW; ++w) dst[w] = src[w];
                    dst += CW;
                }
            }
        }
    }
}

/* ----------------------------------------------------------------------------------------
 * XNOR-popcount GEMM with implicit im2col.
 *
 * Output row m is pixel (b, oh, ow) of a convolution over the packed input X (B, H, W, CW);
 * its K = KH*KW*C bits are the CW words of each tap (i, j), read in place through a table of
 * tap pointers (taps outside the input point at `fill`, the padding value's bits).  A plain
 * GEMM of rows A (M, KWD) is the 1x1 case with H = W = 1, CW = KWD.
 *
 * The weights come as panels of 32 output channels, Wp[(nb * KWD + k) * 32 + j] = Wt[32 nb + j, k]
 * (zero past N): one SIMD vector holds the same word of 8 (AVX-512) or 4 (AVX2) channels, so
 * each lane accumulates one output and no horizontal reduction is needed.  For each (m, n):
 *     acc = K - 2 * popcount(row_m ^ Wt[n]) - corr[m % P, n]        (corr may be NULL)
 * Outputs, both row-major (M, N) (NHWC for convolutions), either may be NULL:
 *     acc_out int32;   y float = (float)acc * scale[n] + shift[n]  (a multiply then an add),
 * then optionally (the fused tail of a residual block) y = y + res[m, n] and
 * y = min(max(y, lo), hi) (NaN propagates, as in torch.clamp).
 * ---------------------------------------------------------------------------------------- */
#define PANEL 32
#define TMAX 64 /* taps handled in place; larger kernels go through an explicit im2col */

typedef struct {
    const uint64_t *X, *fill, *Wp;
    int64_t H, W, CW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
    int64_t M, N, K, P;
    const int32_t *corr;
    int32_t *acc;
    float *y;
    const float *scale, *shift;
    const float *res; /* (M, N) residual added to y, or NULL */
    int clamp;        /* clamp y to [lo, hi] */
    float lo, hi;
    int corr_border;  /* corr rows of pixels whose window lies inside the input are zero: skip */
} gemm_t;

/* Tap pointers and correction rows of rows m .. m+nrows-1: tap[r * TMAX + t] -> CW words,
 * crow[r] -> the N correction ints of row r (NULL without a correction).  Divisions happen
 * once per call; pixels whose window lies inside the input take precomputed tap offsets. */
static void build_rows(const gemm_t *g, int64_t m, int64_t nrows, const uint64_t **tap,
                       const int32_t **crow) {
    const int64_t npix = g->OH * g->OW, T = g->KH * g->KW;
    int64_t b = m / npix, pix = m - b * npix, oh = pix / g->OW, ow = pix - oh * g->OW;
    int64_t p = g->corr ? m % g->P : 0;
    int64_t off[TMAX];
    for (int64_t i = 0; i < g->KH; ++i)
        for (int64_t j = 0; j < g->KW; ++j) off[i * g->KW + j] = (i * g->DH * g->W + j * g->DW) * g->CW;
    for (int64_t r = 0; r < nrows; ++r) {
        const uint64_t **row = tap + r * TMAX;
        const int64_t ih0 = oh * g->SH - g->PH, iw0 = ow * g->SW - g->PW;
        if (ih0 >= 0 && ih0 + (g->KH - 1) * g->DH < g->H && iw0 >= 0 && iw0 + (g->KW - 1) * g->DW < g->W) {
            const uint64_t *base = g->X + ((b * g->H + ih0) * g->W + iw0) * g->CW;
            for (int64_t t = 0; t < T; ++t) row[t] = base + off[t];
            crow[r] = g->corr && !g->corr_border ? g->corr + p * g->N : 0;
        } else {
            for (int64_t i = 0; i < g->KH; ++i) {
                const int64_t ih = ih0 + i * g->DH;
                for (int64_t j = 0; j < g->KW; ++j) {
                    const int64_t iw = iw0 + j * g->DW;
                    row[i * g->KW + j] = (ih >= 0 && ih < g->H && iw >= 0 && iw < g->W)
                                             ? g->X + ((b * g->H + ih) * g->W + iw) * g->CW : g->fill;
                }
            }
            crow[r] = g->corr ? g->corr + p * g->N : 0;
        }
        if (++ow == g->OW) {
            ow = 0;
            if (++oh == g->OH) {
                oh = 0;
                ++b;
            }
        }
        if (g->corr && ++p == g->P) p = 0;
    }
}

/* Finish `cnt` outputs of row m starting at column n from their popcounts. */
static inline void store_row(const gemm_t *g, int64_t m, const int32_t *crow, int64_t n,
                             int64_t cnt, const int64_t *pc) {
    const int32_t *corr = crow ? crow + n : 0;
    for (int64_t j = 0; j < cnt; ++j) {
        int32_t a = (int32_t)(g->K - 2 * pc[j]);
        if (corr) a -= corr[j];
        if (g->acc) g->acc[m * g->N + n + j] = a;
        if (g->y) {
            const float prod = (float)a * g->scale[n + j];
            float v = prod + g->shift[n + j];
            if (g->res) v = v + g->res[m * g->N + n + j];
            if (g->clamp) {
                v = g->lo > v ? g->lo : v; /* NaN stays NaN */
                v = g->hi < v ? g->hi : v;
            }
            g->y[m * g->N + n + j] = v;
        }
    }
}

/* -- portable: rows m.. (tap table `tap`), one panel nb ---------------------------------- */
static inline __attribute__((always_inline)) void
body_portable(const gemm_t *g, int64_t m, int mr, const uint64_t **tap, const int32_t **crow,
              int64_t nb) {
    const int64_t T = g->KH * g->KW, CW = g->CW, KWD = T * CW;
    {
        const int64_t n0 = nb * PANEL, cnt = MIN(PANEL, g->N - n0);
        for (int r = 0; r < mr; ++r) {
            int64_t pc[PANEL] = {0};
            const uint64_t *wk = g->Wp + nb * KWD * PANEL;
            for (int64_t t = 0; t < T; ++t) {
                const uint64_t *a = tap[r * TMAX + t];
                for (int64_t w = 0; w < CW; ++w, wk += PANEL)
                    for (int j = 0; j < PANEL; ++j) pc[j] += __builtin_popcountll(a[w] ^ wk[j]);
            }
            store_row(g, m + r, crow[r], n0, cnt, pc);
        }
    }
}

static void rows_portable(const gemm_t *g, int64_t m, int mr, const uint64_t **tap,
                          const int32_t **crow, int64_t nb) {
    body_portable(g, m, mr, tap, crow, nb);
}

#ifdef BIPER_X86
/* x86 CPUs without AVX2 still have the POPCNT instruction (the generic build calls libgcc) */
__attribute__((target("popcnt"))) static void
rows_popcnt(const gemm_t *g, int64_t m, int mr, const uint64_t **tap, const int32_t **crow,
            int64_t nb) {
    body_portable(g, m, mr, tap, crow, nb);
}
#endif

#include "bitkernels_avx512.h" /* AVX-512 VPOPCNTDQ GEMM rows */

typedef void (*rows_fn)(const gemm_t *, int64_t, const uint64_t **, const int32_t **, int64_t);

#define MGROUP 8 /* row blocks of 4 per task: one weight panel is reused from L1 across them */

/* The tasks of a GEMM: row groups of `mg` blocks of 4 rows (smaller groups when there are few
 * rows) times ranges of the `npanel` weight panels, split only as far as `want` tasks need. */
typedef struct { int64_t mg, nmg, per, ntask; } tasks_t;
static tasks_t split_tasks(int64_t nmb, int64_t npanel, int64_t mg, int64_t want) {
    int64_t nmg = (nmb + mg - 1) / mg;
    if (nmg < want) { /* few rows: smaller row groups, then split the panels too */
        mg = MAX(1, nmb / want);
        nmg = (nmb + mg - 1) / mg;
    }
    const int64_t ngroup = nmg >= want ? 1 : MIN(npanel, (want + nmg - 1) / nmg);
    const int64_t per = (npanel + ngroup - 1) / ngroup;
    const tasks_t t = {mg, nmg, per, nmg * ngroup};
    return t;
}

#include "bitkernels_avx2.h" /* AVX2 GEMM: nibble LUT, byte counters, register tiles */

/* A task is (up to MGROUP row blocks of 4 rows, a range of panels).  It builds the tap tables
 * of its rows once, then for each panel runs every row block, so that the panel (KWD * 256
 * bytes) stays in L1.  Panels are split into ranges only as far as needed to feed every thread. */
static void run_gemm(const gemm_t *g, int nthreads) {
    if (g->M <= 0 || g->N <= 0) return; /* empty batch or no outputs */
    const int isa = biper_get_isa();
    rows_fn fns[5] = {0, 0, 0, 0, 0};
#ifdef BIPER_X86
#ifndef BIPER_NO_AVX512
    if (isa == 2) { fns[1] = rows512_1; fns[2] = rows512_2; fns[3] = rows512_3; fns[4] = rows512_4; }
#endif
    if (isa == 1) { gemm256(g, nthreads); return; }
#endif
    void (*portable)(const gemm_t *, int64_t, int, const uint64_t **, const int32_t **, int64_t) = rows_portable;
#ifdef BIPER_X86
    if (__builtin_cpu_supports("popcnt")) portable = rows_popcnt;
#endif
    const int64_t nmb = (g->M + 3) / 4, npanel = (g->N + PANEL - 1) / PANEL;
    const int64_t want = 8 * (int64_t)(nthreads > 0 ? nthreads : 1);
    const tasks_t t = split_tasks(nmb, npanel, MGROUP, want);
    const int64_t mg = t.mg, nmg = t.nmg, per = t.per, ntask = t.ntask;
    const int64_t work = g->M * g->N * g->KH * g->KW * g->CW;
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (work > PAR_GEMM)
    for (int64_t task = 0; task < ntask; ++task) {
        const uint64_t *tap[4 * MGROUP * TMAX];
        const int32_t *crow[4 * MGROUP];
        const int64_t grp = task / nmg, mb0 = (task % nmg) * mg, mb1 = MIN(nmb, mb0 + mg);
        const int64_t nb0 = grp * per, nb1 = MIN(npanel, nb0 + per);
        if (nb0 >= nb1) continue;
        build_rows(g, mb0 * 4, MIN(g->M, mb1 * 4) - mb0 * 4, tap, crow);
        for (int64_t nb = nb0; nb < nb1; ++nb)
            for (int64_t mb = mb0; mb < mb1; ++mb) {
                const int64_t m = mb * 4, mr = MIN(4, g->M - m), r0 = (mb - mb0) * 4;
                if (fns[mr])
                    fns[mr](g, m, tap + r0 * TMAX, crow + r0, nb);
                else
                    portable(g, m, (int)mr, tap + r0 * TMAX, crow + r0, nb);
            }
    }
}

/* Plain GEMM of packed rows A (M, KWD); pixels P index the correction rows. */
void biper_gemm(const uint64_t *A, const uint64_t *Wp, int64_t M, int64_t N, int64_t KWD,
                int64_t K, int64_t P, const int32_t *corr, int32_t *acc, float *y,
                const float *scale, const float *shift, const float *res, int clamp, float lo,
                float hi, int nthreads) {
    gemm_t g = {A, A, Wp, 1, 1, KWD, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1,
                M, N, K, P, corr, acc, y, scale, shift, res, clamp, lo, hi, 0};
    run_gemm(&g, nthreads);
}

/* ----------------------------------------------------------------------------------------
 * A whole W1A1 convolution in one call: pack the float input (channels-first or channels-last)
 * and run the implicit-im2col GEMM with the padding correction and the per-channel affine
 * (kernels with more than TMAX taps go through an explicit im2col).  `corr` is the zero-padding
 * correction: its rows for pixels whose window lies inside the input are zero and never read.
 * Outputs are row-major (B*OH*OW, N).  Returns 0, or -1 when the workspace cannot be allocated.
 * ---------------------------------------------------------------------------------------- */
int biper_conv2d(const float *x, int channels_last, int64_t B, int64_t C, int64_t H, int64_t W,
                 const float *thr, const uint64_t *Wp, int64_t N, int64_t KH, int64_t KW,
                 int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,
                 const uint64_t *fill, const int32_t *corr, int32_t *acc, float *y,
                 const float *scale, const float *shift, const float *res, int clamp, float lo,
                 float hi, int nthreads) {
    const int64_t CW = (C + 63) / 64;
    const int64_t OH = (H + 2 * PH - DH * (KH - 1) - 1) / SH + 1;
    const int64_t OW = (W + 2 * PW - DW * (KW - 1) - 1) / SW + 1;
    uint64_t *words = (uint64_t *)malloc((size_t)(B * H * W * CW) * sizeof(uint64_t) + 64);
    uint64_t *cols = 0;
    if (!words) return -1;
    if (channels_last)
        biper_pack_rows(x, B * H * W, C, thr, words, nthreads);
    else
        biper_pack(x, B, C, H * W, thr, words, nthreads);
    gemm_t g = {words, fill, Wp, H, W, CW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                B * OH * OW, N, C * KH * KW, OH * OW, corr, acc, y, scale, shift, res, clamp, lo, hi, 1};
    if (KH * KW > TMAX) {
        cols = (uint64_t *)malloc((size_t)(B * OH * OW * KH * KW * CW) * sizeof(uint64_t) + 64);
        if (!cols) {
            free(words);
            return -1;
        }
        biper_im2col(words, B, H, W, CW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, fill, cols, nthreads);
        gemm_t e = {cols, cols, Wp, 1, 1, KH * KW * CW, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1,
                    B * OH * OW, N, C * KH * KW, OH * OW, corr, acc, y, scale, shift, res, clamp, lo, hi, 0};
        g = e;
    }
    run_gemm(&g, nthreads);
    free(words);
    free(cols);
    return 0;
}
