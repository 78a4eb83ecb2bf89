/* Part of bitkernels.c (one translation unit: included at this point, sees everything above). */
#ifdef BIPER_X86
/* -- AVX2 -------------------------------------------------------------------------------
 * No vector popcount: a byte's count is two 16-entry table lookups (vpshufb) of its nibbles.
 * Byte counts accumulate over up to BYTE_WORDS words (31 * 8 = 248 fits a byte) before one
 * vpsadbw per accumulator folds them into 64-bit lane sums.  With enough rows the packed
 * activations and each weight panel are first split into nibbles, lo = v & 0x0f.. and
 * hi = (v >> 4) & 0x0f.. (two words each), since (a ^ w) & 0x0f.. = (a & 0x0f..) ^ (w & 0x0f..):
 * an XOR'ed vector then costs 2 vpxor + 2 vpshufb + 2 vpaddb (4 more without the split).
 * Register tiles (16 ymm): split, TILE_ROWS rows x 4*NV_SPLIT channels (8 byte accumulators),
 * or 1 row x 4*ONEWORD_NV channels when each tap is one word (C <= 64); few rows (batch-1
 * linear layers), 1 row x 32 channels on the unsplit words, reading each panel once, in order.  The epilogue works on 8 channels per vector.  Packing: 8 floats
 * -> 8 bits per compare + vmovmskps (channels-first through an 8x8 bit transpose).
 * ---------------------------------------------------------------------------------------- */
#define NIBBLES 0x0f0f0f0f0f0f0f0fULL
#define BYTE_WORDS 31  /* words whose byte counts (<= 8 each) fit an unsigned byte */
#define SPLIT_ROWS 8   /* fewer rows: the weight split would cost as much as the product */
#ifndef NV_SPLIT
#define NV_SPLIT 4     /* vectors of 4 channels per row in a split tile */
#endif
#ifndef MGROUP256
#define MGROUP256 16   /* row blocks of 4 per task with split panels */
#endif
#ifndef ONEWORD_NV
#define ONEWORD_NV 4   /* vectors per 1-row tile when taps are one word */
#endif
#ifndef TILE_ROWS
#define TILE_ROWS 2    /* rows per split tile (measured best on Zen 2: 2 x 16 channels) */
#endif
#ifdef _OPENMP
#define THREAD_ID omp_get_thread_num()
#else
#define THREAD_ID 0
#endif

static AI T256 __m256i lut256(void) {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

/* Lane sums of channels c..c+3 and c+4..c+7 (64-bit, < 2^31) -> 8 int32 in channel order. */
static AI T256 __m256i narrow8(__m256i lo4, __m256i hi4) {
    const __m256i both = _mm256_or_si256(lo4, _mm256_slli_epi64(hi4, 32)); /* c0 c4 c1 c5 .. */
    return _mm256_permutevar8x32_epi32(both, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

/* store_row for 8 channels n.. of row m, same float operations.  Full groups use plain loads
 * and stores (masked stores are slow on AMD CPUs); a tail of cnt < 8 channels is masked. */
static AI T256 void store8_body(const gemm_t *g, int64_t m, const int32_t *crow, int64_t n,
                                __m256i pc, const int FULL, __m256i mk) {
    const int64_t at = m * g->N + n;
#define LOAD_I(p) (FULL ? _mm256_loadu_si256((const __m256i *)(p)) : _mm256_maskload_epi32((p), mk))
#define LOAD_F(p) (FULL ? _mm256_loadu_ps(p) : _mm256_maskload_ps((p), mk))
    __m256i a = _mm256_sub_epi32(_mm256_set1_epi32((int)g->K), _mm256_slli_epi32(pc, 1));
    if (crow) a = _mm256_sub_epi32(a, LOAD_I(crow + n));
    if (g->acc) {
        if (FULL) _mm256_storeu_si256((__m256i *)(g->acc + at), a);
        else _mm256_maskstore_epi32(g->acc + at, mk, a);
    }
    if (g->y) {
        const __m256 prod = _mm256_mul_ps(_mm256_cvtepi32_ps(a), LOAD_F(g->scale + n));
        __m256 y = _mm256_add_ps(prod, LOAD_F(g->shift + n));
        if (g->res) y = _mm256_add_ps(y, LOAD_F(g->res + at));
        if (g->clamp) { /* max/min return the second operand when one is NaN */
            y = _mm256_max_ps(_mm256_set1_ps(g->lo), y);
            y = _mm256_min_ps(_mm256_set1_ps(g->hi), y);
        }
        if (FULL) _mm256_storeu_ps(g->y + at, y);
        else _mm256_maskstore_ps(g->y + at, mk, y);
    }
#undef LOAD_I
#undef LOAD_F
}

static AI T256 void store8(const gemm_t *g, int64_t m, const int32_t *crow, int64_t n,
                           int64_t cnt, __m256i pc) {
    if (cnt >= 8) store8_body(g, m, crow, n, pc, 1, pc);
    else store8_body(g, m, crow, n, pc, 0, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)cnt),
                                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* words v -> pairs (v & 0x0f.., (v >> 4) & 0x0f..) */
static T256 void split_words(const uint64_t *src, int64_t n, uint64_t *dst) {
    for (int64_t i = 0; i < n; ++i) {
        dst[2 * i] = src[i] & NIBBLES;
        dst[2 * i + 1] = (src[i] >> 4) & NIBBLES;
    }
}

/* a panel (KWD, 32) -> (KWD, [32 lo, 32 hi]) */
static T256 void split_panel(const uint64_t *wp, int64_t kwd, uint64_t *ws) {
    const __m256i nib = _mm256_set1_epi8(0x0f);
    for (int64_t k = 0; k < kwd; ++k, wp += PANEL, ws += 2 * PANEL)
        for (int v = 0; v < PANEL; v += 4) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(wp + v));
            _mm256_storeu_si256((__m256i *)(ws + v), _mm256_and_si256(w, nib));
            _mm256_storeu_si256((__m256i *)(ws + PANEL + v), _mm256_and_si256(_mm256_srli_epi16(w, 4), nib));
        }
}

/* MR rows x 4*NV channels from n on; tap tables point at split words, ws at the split panel
 * shifted to channel n's column. */
static AI T256 void tile_split(const gemm_t *g, int64_t m, const uint64_t **tap,
                               const int32_t **crow, const uint64_t *ws, int64_t n,
                               const int MR, const int NV, const int ONEWORD) {
    const int64_t T = g->KH * g->KW, CW = ONEWORD ? 1 : g->CW / 2; /* g: the split problem */
    const __m256i lut = lut256(), zero = _mm256_setzero_si256();
    __m256i acc[4][8], wide[4][8];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = wide[r][v] = zero;
    int left = BYTE_WORDS;
    for (int64_t t = 0; t < T; ++t) {
        const uint64_t *ap[4];
        for (int r = 0; r < MR; ++r) ap[r] = tap[r * TMAX + t];
        for (int64_t w = 0; w < CW; ++w, ws += 2 * PANEL) {
            for (int r = 0; r < MR; ++r) {
                const __m256i lo = _mm256_set1_epi64x((long long)ap[r][2 * w]);
                const __m256i hi = _mm256_set1_epi64x((long long)ap[r][2 * w + 1]);
                for (int v = 0; v < NV; ++v) {
                    const __m256i xl = _mm256_xor_si256(lo, _mm256_loadu_si256((const __m256i *)(ws + 4 * v)));
                    const __m256i xh = _mm256_xor_si256(hi, _mm256_loadu_si256((const __m256i *)(ws + PANEL + 4 * v)));
                    acc[r][v] = _mm256_add_epi8(acc[r][v], _mm256_add_epi8(_mm256_shuffle_epi8(lut, xl),
                                                                           _mm256_shuffle_epi8(lut, xh)));
                }
            }
            if (--left == 0) {
                for (int r = 0; r < MR; ++r)
                    for (int v = 0; v < NV; ++v) {
                        wide[r][v] = _mm256_add_epi64(wide[r][v], _mm256_sad_epu8(acc[r][v], zero));
                        acc[r][v] = zero;
                    }
                left = BYTE_WORDS;
            }
        }
    }
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v) wide[r][v] = _mm256_add_epi64(wide[r][v], _mm256_sad_epu8(acc[r][v], zero));
        for (int v = 0; v < NV; v += 2)
            if (n + 4 * v < g->N)
                store8(g, m + r, crow[r], n + 4 * v, g->N - n - 4 * v, narrow8(wide[r][v], wide[r][v + 1]));
    }
}

/* One row x one whole panel (32 channels, 8 vectors) on unsplit words. */
static T256 void row_direct(const gemm_t *g, int64_t m, const uint64_t **tap, const int32_t **crow,
                            const uint64_t *wk, int64_t n) {
    const int64_t T = g->KH * g->KW, CW = g->CW;
    const __m256i lut = lut256(), zero = _mm256_setzero_si256(), nib = _mm256_set1_epi8(0x0f);
    __m256i acc[8], wide[8];
    for (int v = 0; v < 8; ++v) acc[v] = wide[v] = zero;
    int left = BYTE_WORDS;
    for (int64_t t = 0; t < T; ++t) {
        const uint64_t *ap = tap[t];
        for (int64_t w = 0; w < CW; ++w, wk += PANEL) {
            const __m256i a = _mm256_set1_epi64x((long long)ap[w]);
            for (int v = 0; v < 8; ++v) {
                const __m256i x = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(wk + 4 * v)));
                const __m256i lo = _mm256_and_si256(x, nib), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
                acc[v] = _mm256_add_epi8(acc[v], _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo),
                                                                 _mm256_shuffle_epi8(lut, hi)));
            }
            if (--left == 0) {
                for (int v = 0; v < 8; ++v) {
                    wide[v] = _mm256_add_epi64(wide[v], _mm256_sad_epu8(acc[v], zero));
                    acc[v] = zero;
                }
                left = BYTE_WORDS;
            }
        }
    }
    for (int v = 0; v < 8; ++v) wide[v] = _mm256_add_epi64(wide[v], _mm256_sad_epu8(acc[v], zero));
    for (int v = 0; v < 8; v += 2)
        if (n + 4 * v < g->N) store8(g, m, crow[0], n + 4 * v, g->N - n - 4 * v, narrow8(wide[v], wide[v + 1]));
}

#define BIPER_TILE256(R)                                                                          \
    static T256 void tile256_##R(const gemm_t *g, int64_t m, const uint64_t **t, const int32_t **c, \
                                 const uint64_t *ws, int64_t n) {                                 \
        tile_split(g, m, t, c, ws, n, R, NV_SPLIT, 0);                                            \
    }
BIPER_TILE256(4)
BIPER_TILE256(3)
BIPER_TILE256(2)
BIPER_TILE256(1)
typedef char tile_rows_check[TILE_ROWS >= 1 && TILE_ROWS <= 4 && NV_SPLIT % 2 == 0 && NV_SPLIT <= 4 ? 1 : -1];

/* one word per tap (C <= 64): 1 row x the whole panel */
static T256 void tile256_1w(const gemm_t *g, int64_t m, const uint64_t **t, const int32_t **c,
                            const uint64_t *ws, int64_t n) { tile_split(g, m, t, c, ws, n, 1, ONEWORD_NV, 1); }

typedef void (*tile_fn)(const gemm_t *, int64_t, const uint64_t **, const int32_t **, const uint64_t *, int64_t);

/* The AVX2 GEMM: the task split of run_gemm (row groups x panel ranges); with SPLIT_ROWS rows or
 * more, the activations are split once per call and each task splits a panel before its rows. */
static void gemm256(const gemm_t *g, int nthreads) {
    const tile_fn tiles[5] = {0, tile256_1, tile256_2, tile256_3, tile256_4};
    const int64_t KWD = g->KH * g->KW * g->CW, npanel = (g->N + PANEL - 1) / PANEL;
    const int nthr = nthreads > 0 ? nthreads : 1;
    gemm_t gs = *g;
    uint64_t *xs = 0, *wsall = 0;
    if (g->M >= SPLIT_ROWS) {
        const int64_t nx = g->M / (g->OH * g->OW) * g->H * g->W * g->CW;
        xs = (uint64_t *)malloc((size_t)(2 * (nx + g->CW) + 2 * PANEL * KWD * nthr) * sizeof(uint64_t) + 64);
        if (xs) {
            wsall = xs + 2 * (nx + g->CW);
            split_words(g->X, nx, xs);
            split_words(g->fill, g->CW, xs + 2 * nx);
            gs.X = xs;
            gs.fill = xs + 2 * nx;
            gs.CW = 2 * g->CW; /* tap tables address the split words */
        }
    }
    const int64_t nmb = (g->M + 3) / 4;
    const int64_t want = (xs ? 2 : 8) * (int64_t)nthr; /* split: few, tall row groups */
    const tasks_t t = split_tasks(nmb, npanel, xs ? MGROUP256 : MGROUP, want);
    const int64_t mg = t.mg, nmg = t.nmg, per = t.per, ntask = t.ntask;
    const int64_t work = g->M * g->N * KWD;
    const int oneword = g->CW == 1; /* one word per tap: 1-row tiles measured best */
    (void)nthreads;
    (void)work;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (work > PAR_GEMM)
    for (int64_t task = 0; task < ntask; ++task) {
        const uint64_t *tap[4 * MGROUP256 * TMAX];
        const int32_t *crow[4 * MGROUP256];
        const int64_t grp = task / nmg, mb0 = (task % nmg) * mg, mb1 = MIN(nmb, mb0 + mg);
        const int64_t nb0 = grp * per, nb1 = MIN(npanel, nb0 + per);
        if (nb0 >= nb1) continue;
        uint64_t *ws = xs ? wsall + (int64_t)THREAD_ID * 2 * PANEL * KWD : 0;
        build_rows(xs ? &gs : g, mb0 * 4, MIN(g->M, mb1 * 4) - mb0 * 4, tap, crow);
        for (int64_t nb = nb0; nb < nb1; ++nb) {
            const uint64_t *wp = g->Wp + nb * KWD * PANEL;
            if (ws) split_panel(wp, KWD, ws);
            for (int64_t mb = mb0; mb < mb1; ++mb) {
                const int64_t m = mb * 4, mr = MIN(4, g->M - m), r0 = (mb - mb0) * 4;
                for (int64_t s = 0; s < PANEL; s += 4 * (oneword ? ONEWORD_NV : NV_SPLIT)) {
                    if (nb * PANEL + s >= g->N) break;
                    if (ws && oneword)
                        for (int64_t q = 0; q < mr; ++q)
                            tile256_1w(&gs, m + q, tap + (r0 + q) * TMAX, crow + r0 + q, ws + s, nb * PANEL + s);
                    else if (ws)
                        for (int64_t q = 0; q < mr; q += TILE_ROWS)
                            tiles[MIN(TILE_ROWS, mr - q)](&gs, m + q, tap + (r0 + q) * TMAX, crow + r0 + q, ws + s, nb * PANEL + s);
                    else if (s == 0)
                        for (int64_t r = 0; r < mr; ++r)
                            row_direct(g, m + r, tap + (r0 + r) * TMAX, crow + r0 + r, wp, nb * PANEL);
                }
            }
        }
    }
    free(xs);
}
#endif /* BIPER_X86 */
