/* biper C export runtime: the layer functions of a generated model.c (pasted into it verbatim).
 *
 * C99, no dynamic allocation, only <stdint.h> / <stddef.h> (and <stdio.h> for BIPER_DUMP).
 * Float tensors are HWC (channels innermost) unless a function takes element strides; bit
 * tensors hold ceil(C/16) 16-bit words per pixel, bit j of word k = channel 16k+j, set when the
 * value is -1 (the predicate x < 0: 0.0 and -0.0 are +1); unused high bits are 0.
 * W1A1 layers accumulate in int32 exactly as the integer convolution of the +-1 tensors:
 *     acc = sum over taps inside the image of (Cin - 2 popcount(x XOR w))
 * taps in the zero padding contribute 0, taps in +-1 padding use the padding value's bits. */

#ifdef BIPER_DUMP
FILE *biper_dump_file = NULL;

static void dump_head(int32_t tag, int32_t id, int32_t count) {
    int32_t h[3];
    h[0] = tag; h[1] = id; h[2] = count;
    if (biper_dump_file) fwrite(h, sizeof h, 1, biper_dump_file);
}

static void dump_word(const void *v) {
    if (biper_dump_file) fwrite(v, 4, 1, biper_dump_file);
}
#endif

#ifdef BIPER_OP_FCONV
/* Convolution (and linear layer, as a 1x1 convolution of a 1x1 image) with float inputs. */
typedef struct {
    int16_t cin, h, w, cout, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
    int32_t isc, ish, isw;         /* input element strides of channel, row, column */
    float padv;                /* value outside the image */
    const float *wf;           /* (cout, kh, kw, cin) float weights, or NULL */
    const uint16_t *wb;        /* (cout, kh * kw, ceil(cin/16)) sign bits (W1A32), or NULL */
    const float *scale;        /* y = acc * scale[c] + shift[c]; either may be NULL */
    const float *shift;
} fconv_t;

static void fconv(const fconv_t *p, const float *x, float *y) {
    const int cw = (p->cin + 15) / 16;
    int oy, ox, co, ky, kx, ci;
    for (oy = 0; oy < p->oh; ++oy) {
        for (ox = 0; ox < p->ow; ++ox) {
            for (co = 0; co < p->cout; ++co) {
                float acc = 0.0f;
                for (ky = 0; ky < p->kh; ++ky) {
                    const int iy = oy * p->sh - p->ph + ky * p->dh;
                    for (kx = 0; kx < p->kw; ++kx) {
                        const int ix = ox * p->sw - p->pw + kx * p->dw;
                        const int inside = iy >= 0 && iy < p->h && ix >= 0 && ix < p->w;
                        const int tap = ky * p->kw + kx;
                        if (!inside && p->padv == 0.0f) continue;
                        for (ci = 0; ci < p->cin; ++ci) {
                            const float v = inside ? x[ci * p->isc + iy * p->ish + ix * p->isw] : p->padv;
                            float wt;
                            if (p->wf) {
                                wt = p->wf[(co * p->kh * p->kw + tap) * p->cin + ci];
                            } else {
                                const uint16_t word = p->wb[(co * p->kh * p->kw + tap) * cw + ci / 16];
                                wt = ((word >> (ci % 16)) & 1u) ? -1.0f : 1.0f;
                            }
                            acc += v * wt;
                        }
                    }
                }
                if (p->scale) acc = acc * p->scale[co];
                if (p->shift) acc = acc + p->shift[co];
                y[(oy * p->ow + ox) * p->cout + co] = acc;
            }
        }
    }
}
#endif

#ifdef BIPER_OP_BCONV
/* Signs of a float tensor (any strides) minus an optional per-channel threshold -> bits. */
typedef struct {
    int16_t c, h, w, id;       /* id: layer number in BIPER_DUMP records */
    int32_t sc, sh, sw;
    const float *thr;          /* bit = (x - thr[c]) < 0, or x < 0 when NULL */
} pack_t;

static void pack(const pack_t *p, const float *x, uint16_t *b) {
    const int cw = (p->c + 15) / 16;
    int iy, ix, k, j;
#ifdef BIPER_DUMP
    int ci;
    dump_head(1, p->id, p->c * p->h * p->w);
    for (ci = 0; ci < p->c; ++ci)
        for (iy = 0; iy < p->h; ++iy)
            for (ix = 0; ix < p->w; ++ix) dump_word(&x[ci * p->sc + iy * p->sh + ix * p->sw]);
#endif
    for (iy = 0; iy < p->h; ++iy) {
        for (ix = 0; ix < p->w; ++ix) {
            const float *px = x + iy * p->sh + ix * p->sw;
            for (k = 0; k < cw; ++k) {
                unsigned v = 0;
                for (j = 0; j < 16 && 16 * k + j < p->c; ++j) {
                    float xv = px[(16 * k + j) * p->sc];
                    if (p->thr) xv = xv - p->thr[16 * k + j];
                    if (xv < 0.0f) v |= 1u << j;
                }
                b[(iy * p->w + ix) * cw + k] = (uint16_t)v;
            }
        }
    }
}

static int popcount32(uint32_t v) {
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    return (int)((v * 0x01010101u) >> 24);
}

/* W1A1 convolution: bits in, y = clamp((float)acc * scale + shift + res) out (HWC). */
typedef struct {
    int16_t cin, h, w, cout, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
    int16_t id;                /* layer number in BIPER_DUMP records */
    int8_t pad;                /* padding value: 0, +1 or -1 */
    int8_t has_lo, has_hi;     /* clamp to [lo, hi] (each bound optional) */
    const uint16_t *wb;        /* (cout, kh * kw, ceil(cin/16)) sign bits */
    const float *scale, *shift;
    float lo, hi;
} bconv_t;

static uint16_t fill_word(const bconv_t *p, int k) {
    const int cw = (p->cin + 15) / 16, rest = p->cin % 16;
    if (p->pad >= 0) return 0;
    return (uint16_t)((k < cw - 1 || rest == 0) ? 0xFFFFu : (1u << rest) - 1u);
}

/* res may be y itself (the output replaces the residual in place). */
static void bconv(const bconv_t *p, const uint16_t *xb, const float *res, float *y) {
    const int cw = (p->cin + 15) / 16, taps = p->kh * p->kw;
    int oy, ox, co, ky, kx, k;
#ifdef BIPER_DUMP
    dump_head(2, p->id, p->oh * p->ow * p->cout);
#endif
    for (oy = 0; oy < p->oh; ++oy) {
        for (ox = 0; ox < p->ow; ++ox) {
            for (co = 0; co < p->cout; ++co) {
                const uint16_t *wr = p->wb + (size_t)co * taps * cw;
                const size_t o = (size_t)(oy * p->ow + ox) * p->cout + co;
                int32_t acc = 0;
                float v;
                for (ky = 0; ky < p->kh; ++ky) {
                    const int iy = oy * p->sh - p->ph + ky * p->dh;
                    for (kx = 0; kx < p->kw; ++kx, wr += cw) {
                        const int ix = ox * p->sw - p->pw + kx * p->dw;
                        int pc = 0;
                        if (iy >= 0 && iy < p->h && ix >= 0 && ix < p->w) {
                            const uint16_t *xr = xb + (size_t)(iy * p->w + ix) * cw;
                            for (k = 0; k + 1 < cw; k += 2)
                                pc += popcount32((uint32_t)(xr[k] ^ wr[k])
                                                 | ((uint32_t)(xr[k + 1] ^ wr[k + 1]) << 16));
                            if (k < cw) pc += popcount32((uint32_t)(xr[k] ^ wr[k]));
                        } else if (p->pad != 0) {
                            for (k = 0; k < cw; ++k) pc += popcount32((uint32_t)(fill_word(p, k) ^ wr[k]));
                        } else {
                            continue;
                        }
                        acc += p->cin - 2 * pc;
                    }
                }
                wr -= taps * cw;
#ifdef BIPER_DUMP
                dump_word(&acc);
#endif
                v = (float)acc * p->scale[co];
                v = v + p->shift[co];
                if (res) v = v + res[o];
                if (p->has_lo) v = p->lo > v ? p->lo : v; /* NaN stays NaN */
                if (p->has_hi) v = p->hi < v ? p->hi : v;
                y[o] = v;
            }
        }
    }
}
#endif

/* y = x * a[c] + b[c] over n values of c channels (HWC or a vector): an eval BatchNorm. */
#ifdef BIPER_OP_AFFINE
static void affine(const float *x, float *y, int n, int c, const float *a, const float *b) {
    int i;
    for (i = 0; i < n; ++i) {
        float v = x[i] * a[i % c];
        y[i] = v + b[i % c];
    }
}
#endif

#ifdef BIPER_OP_CLAMP
static void clamp(const float *x, float *y, int n, int has_lo, float lo, int has_hi, float hi) {
    int i;
    for (i = 0; i < n; ++i) {
        float v = x[i];
        if (has_lo) v = lo > v ? lo : v;
        if (has_hi) v = hi < v ? hi : v;
        y[i] = v;
    }
}
#endif

#ifdef BIPER_OP_ADD
static void add(const float *a, const float *b, float *y, int n) {
    int i;
    for (i = 0; i < n; ++i) y[i] = a[i] + b[i];
}
#endif

/* k x k pooling with stride s, no padding, HWC; mode 0: average, 1: maximum. */
#ifdef BIPER_OP_POOL
static void pool(const float *x, float *y, int c, int w, int oh, int ow, int k, int s, int mode) {
    int oy, ox, ch, ky, kx;
    for (oy = 0; oy < oh; ++oy)
        for (ox = 0; ox < ow; ++ox)
            for (ch = 0; ch < c; ++ch) {
                float acc = mode ? x[((oy * s) * w + ox * s) * c + ch] : 0.0f;
                for (ky = 0; ky < k; ++ky)
                    for (kx = 0; kx < k; ++kx) {
                        const float v = x[((oy * s + ky) * w + ox * s + kx) * c + ch];
                        if (mode) acc = v > acc || v != v ? v : acc;
                        else acc += v;
                    }
                y[(oy * ow + ox) * c + ch] = mode ? acc : acc / (float)(k * k);
            }
}
#endif

/* Global average pool: HWC (h*w pixels of c channels) -> c values. */
#ifdef BIPER_OP_GAP
static void gap(const float *x, float *y, int c, int hw) {
    int ch, i;
    for (ch = 0; ch < c; ++ch) {
        float acc = 0.0f;
        for (i = 0; i < hw; ++i) acc += x[i * c + ch];
        y[ch] = acc / (float)hw;
    }
}
#endif

/* Option-A shortcut: s x s average pooling (s = 1: none), then zero channels in front and
 * behind: HWC (h, w, c) -> HWC (h/s, w/s, front + c + back). */
#ifdef BIPER_OP_SHORTCUT
static void shortcut(const float *x, float *y, int c, int h, int w, int s, int front, int back) {
    const int oh = h / s, ow = w / s, cout = front + c + back;
    int oy, ox, ch, ky, kx;
    for (oy = 0; oy < oh; ++oy)
        for (ox = 0; ox < ow; ++ox) {
            float *py = y + (oy * ow + ox) * cout;
            for (ch = 0; ch < front; ++ch) py[ch] = 0.0f;
            for (ch = 0; ch < c; ++ch) {
                float acc = 0.0f;
                for (ky = 0; ky < s; ++ky)
                    for (kx = 0; kx < s; ++kx) acc += x[((oy * s + ky) * w + ox * s + kx) * c + ch];
                py[front + ch] = s == 1 ? acc : acc / (float)(s * s);
            }
            for (ch = front + c; ch < cout; ++ch) py[ch] = 0.0f;
        }
}
#endif

/* Reorder a tensor with element strides (sc, sh, sw) to CHW (flatten) or HWC order. */
#ifdef BIPER_OP_RELAYOUT
static void relayout(const float *x, float *y, int c, int h, int w, int sc, int sh, int sw, int to_hwc) {
    int ch, iy, ix;
    for (ch = 0; ch < c; ++ch)
        for (iy = 0; iy < h; ++iy)
            for (ix = 0; ix < w; ++ix)
                y[to_hwc ? (iy * w + ix) * c + ch : (ch * h + iy) * w + ix] = x[ch * sc + iy * sh + ix * sw];
}
#endif
