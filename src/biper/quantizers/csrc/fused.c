/* One-pass training kernels for biper's activation quantizers (float32, dense buffers).
 *
 * Each function reads and writes flat buffers: element-wise kernels see n values; per-sample
 * kernels see B samples of n contiguous values (true for both NCHW and channels-last tensors).
 * sign(x) = -1 if x < 0 else +1 (so sign(0) = sign(-0.0) = +1, as everywhere in biper).
 * Sums run in float over blocks of BLOCK values, blocks added in double.
 *
 *   biper_sign            out = sign(x)
 *   biper_approx_backward out = g * max(0, 2 - 2|x|)                      (Bi-Real ApproxSign B')
 *   biper_clip_backward   out = g * 1{|x| <= clip}                         (clipped STE B')
 *   biper_recu_forward    out = sign(x); sums[b] = sum x; squares[b] = sum x^2
 *   biper_recu_backward   gs = g * max(0, 2 - 2 r_b |x|);  a_b = sum gs x;  k_b = r_b^3 a_b / (n - 1)
 *                         out = gs r_b + k_b (mean_b - x)    (ReCU normalisation chained, see
 *                         quantizers/activation.py::NormalisedSign)
 */
#include <math.h>
#include <stdint.h>

#define BIPER_FUSED_ABI 2
#define BLOCK 2048

int biper_fused_abi(void) { return BIPER_FUSED_ABI; }

static inline float sign1(float v) { return v < 0.f ? -1.f : 1.f; }
static inline float approx(float v, float two_r) {  /* max(0, 2 - 2 r |v|) */
    float d = 2.f - two_r * fabsf(v);
    return d > 0.f ? d : 0.f;
}

void biper_sign(const float *x, float *out, int64_t n, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++) out[i] = sign1(x[i]);
    }
}

void biper_approx_backward(const float *x, const float *g, float *out, int64_t n, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++) out[i] = g[i] * approx(x[i], 2.f);
    }
}

void biper_clip_backward(const float *x, const float *g, float *out, int64_t n, float clip, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++) out[i] = fabsf(x[i]) <= clip ? g[i] : 0.f;
    }
}

void biper_recu_forward(const float *x, float *out, double *sums, double *squares, int64_t batch,
                        int64_t n, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * n;
        float *ob = out + b * n;
        double s = 0.0, q = 0.0;
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
            int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
            float fs = 0.f, fq = 0.f;
            #pragma omp simd reduction(+ : fs, fq)
            for (int64_t i = i0; i < i1; i++) {
                float v = xb[i];
                fs += v;
                fq += v * v;
                ob[i] = sign1(v);
            }
            s += fs;
            q += fq;
        }
        sums[b] = s;
        squares[b] = q;
    }
}

void biper_recu_backward(const float *x, const float *g, const float *r, const float *mean,
                         float *out, int64_t batch, int64_t n, int threads) {
    const double inv_n1 = 1.0 / (double)(n > 1 ? n - 1 : 1);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * n, *gb = g + b * n;
        float *ob = out + b * n;
        const float rb = r[b], two_r = 2.f * rb;
        double a = 0.0;
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
            int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
            float fa = 0.f;
            #pragma omp simd reduction(+ : fa)
            for (int64_t i = i0; i < i1; i++) fa += gb[i] * approx(xb[i], two_r) * xb[i];
            a += fa;
        }
        const float k = (float)((double)rb * rb * rb * a * inv_n1);
        const float km = k * mean[b];
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) ob[i] = gb[i] * approx(xb[i], two_r) * rb + (km - k * xb[i]);
    }
}
