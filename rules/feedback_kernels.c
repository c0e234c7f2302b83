/* brSF's per-pass feedback draw on the CPU, fused: out[i] = (k_i * scale) * sign(w[i]), k_i odd in [1, 65535].
 *
 * One pass that reads W and writes B (once a training step has pushed the weights out of cache, the draw is
 * memory-bound and a separate sign(W) buffer would double its cost); sign follows torch.sign: 0 for 0, -0, NaN.
 *
 * The bits are counter-based: 32-bit word j of a draw is h(h(j ^ k1) + k2), h = Wellons' lowbias32, and holds the
 * 16-bit lanes of elements 2j and 2j+1. (k1, k2) is derived per draw from the stream's 64-bit key and draw number,
 * so no two draws share bits; any slice of a draw can be computed on its own, and the same arithmetic in numpy or
 * torch (rules/streams.py) reproduces it exactly.
 * 32-bit multiplies vectorize on every x86-64 level; target_clones picks AVX2/AVX-512 at run time where present.
 *
 * Built with -fopenmp where torch runs on GNU OpenMP (rules/kernels.py), the loops over large tensors are split
 * across torch's own OpenMP threads: the library resolves libgomp.so.1 to the copy torch has loaded, so the same
 * threads that run the convolutions, already awake between ops, take the other halves. Every element is computed on
 * its own, so the numbers do not depend on the thread count. Without -fopenmp the pragmas are ignored.
 */
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SIGSYM_NO_CLONES)
#define SIGSYM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SIGSYM_CLONES
#endif

/* Split a loop across threads only when it is long enough to pay for waking them (a few microseconds). */
#define SIGSYM_PAR_MIN 65536

static inline float sgn(float v) { return (float)((v > 0.0f) - (v < 0.0f)); }

static inline uint32_t h32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x21f0aaadu;
    x ^= x >> 15;
    x *= 0xd35a2d97u;
    x ^= x >> 15;
    return x;
}

/* (float)k * scale, then times the sign: one float32 rounding, as numpy and torch compute it (rules/streams.py). */
static inline float mag(uint32_t bits, float scale) { return (float)(int32_t)(bits | 1u) * scale; }

/* Elements [start, stop) of a draw; start must be even. */
SIGSYM_CLONES
void sigsym_brsf_fill(float *out, const float *w, int64_t start, int64_t stop, uint32_t k1, uint32_t k2,
                      float scale) {
    int64_t j0 = start >> 1, j1 = stop >> 1;
    #pragma omp parallel for schedule(static) if (2 * (j1 - j0) >= SIGSYM_PAR_MIN)
    for (int64_t j = j0; j < j1; ++j) {
        uint32_t x = h32(h32((uint32_t)j ^ k1) + k2);
        out[2 * j] = mag(x & 0xffffu, scale) * sgn(w[2 * j]);
        out[2 * j + 1] = mag(x >> 16, scale) * sgn(w[2 * j + 1]);
    }
    if (stop & 1 && stop - 1 >= start) {
        uint32_t x = h32(h32((uint32_t)j1 ^ k1) + k2);
        out[stop - 1] = mag(x & 0xffffu, scale) * sgn(w[stop - 1]);
    }
}

/* sign(W) as one byte per weight (-1, 0, 1; 0 for 0, -0, NaN as sgn), for the draws below. */
SIGSYM_CLONES
void sigsym_sign_codes(int8_t *codes, const float *w, int64_t n) {
    #pragma omp parallel for schedule(static) if (n >= SIGSYM_PAR_MIN)
    for (int64_t i = 0; i < n; ++i) {
        codes[i] = (int8_t)((w[i] > 0.0f) - (w[i] < 0.0f));
    }
}

/* Words [j0, j1) of the same draw as sigsym_brsf_fill with sign(W) read from its codes (sigsym_brsf_fill_codes). */
SIGSYM_CLONES
static void fill_codes_portable(float *out, const int8_t *codes, int64_t j0, int64_t j1, uint32_t k1, uint32_t k2,
                                float scale) {
    #pragma omp parallel for schedule(static) if (2 * (j1 - j0) >= SIGSYM_PAR_MIN)
    for (int64_t j = j0; j < j1; ++j) {
        uint32_t x = h32(h32((uint32_t)j ^ k1) + k2);
        out[2 * j] = mag(x & 0xffffu, scale) * (float)codes[2 * j];
        out[2 * j + 1] = mag(x >> 16, scale) * (float)codes[2 * j + 1];
    }
}

/* Bring B = mag * sign(W) (or scale * sign(W) when mag is NULL) up to date after a weight update, rewriting only
 * the entries whose sign changed.
 *
 * rec is a record of sign(W) as of B's last update: per block of 64 weights, a bit mask of the positive ones and one
 * of the negative ones (two words, 1/16 of B's bytes; both bits set means "unknown", which is how the caller asks
 * for a full rebuild). A fine-tuning step flips few signs, so this reads W (which the layer's forward has just
 * pulled into cache) and the record, and writes almost nothing. The masks come from one compare per 16 weights
 * with AVX-512 (one compare and a movemask per 8 with AVX2): 2 and 4 times faster than the loop gcc vectorizes from
 * portable C, which is kept for other CPUs. Blocks [lo, hi) of the n weights. */
#define SIGSYM_BLOCK 64

static void masks_portable(const float *p, int64_t len, uint64_t *pos, uint64_t *neg) {
    uint64_t ps = 0, ng = 0;
    for (int64_t k = 0; k < len; ++k) {
        ps |= (uint64_t)(p[k] > 0.0f) << k;
        ng |= (uint64_t)(p[k] < 0.0f) << k;
    }
    *pos = ps;
    *neg = ng;
}

/* Rewrite the entries of block j whose sign differs from the record, and record the new masks. */
static inline void settle_block(float *b, uint64_t *rec, const float *mag, float scale, int64_t j, int64_t len,
                                uint64_t pos, uint64_t neg) {
    uint64_t diff = (pos ^ rec[2 * j]) | (neg ^ rec[2 * j + 1]);
    if (!diff) {
        return;
    }
    int64_t base = j * SIGSYM_BLOCK;
    for (int64_t k = 0; k < len; ++k) {
        if (diff >> k & 1u) {
            float s = (float)(int)((pos >> k & 1u) - (neg >> k & 1u));
            b[base + k] = (mag ? mag[base + k] : scale) * s;
        }
    }
    rec[2 * j] = pos;
    rec[2 * j + 1] = neg;
}

static void resign_portable(float *b, uint64_t *rec, const float *w, const float *mag, float scale, int64_t n,
                            int64_t lo, int64_t hi) {
    #pragma omp parallel for schedule(static) if ((hi - lo) * SIGSYM_BLOCK >= SIGSYM_PAR_MIN)
    for (int64_t j = lo; j < hi; ++j) {
        int64_t base = j * SIGSYM_BLOCK, len = n - base < SIGSYM_BLOCK ? n - base : SIGSYM_BLOCK;
        uint64_t pos, neg;
        masks_portable(w + base, len, &pos, &neg);
        settle_block(b, rec, mag, scale, j, len, pos, neg);
    }
}

/* The vector loops below take the whole blocks of [lo, hi); the last, partial block goes to the portable loop. */
static inline int64_t whole_blocks_end(int64_t n, int64_t hi) {
    return n / SIGSYM_BLOCK < hi ? n / SIGSYM_BLOCK : hi;
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(SIGSYM_NO_CLONES)
#include <immintrin.h>
#define SIGSYM_AVX2 1

__attribute__((target("avx2")))
static void resign_avx2(float *b, uint64_t *rec, const float *w, const float *mag, float scale, int64_t n,
                        int64_t lo, int64_t hi) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t end = whole_blocks_end(n, hi);
    #pragma omp parallel for schedule(static) if ((end - lo) * SIGSYM_BLOCK >= SIGSYM_PAR_MIN)
    for (int64_t j = lo; j < end; ++j) {
        uint64_t pos = 0, neg = 0;
        for (int k = 0; k < SIGSYM_BLOCK / 8; ++k) {
            __m256 v = _mm256_loadu_ps(w + j * SIGSYM_BLOCK + 8 * k);
            pos |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ)) << (8 * k);
            neg |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ)) << (8 * k);
        }
        settle_block(b, rec, mag, scale, j, SIGSYM_BLOCK, pos, neg);
    }
    resign_portable(b, rec, w, mag, scale, n, end > lo ? end : lo, hi);
}

__attribute__((target("avx512f")))
static void resign_avx512(float *b, uint64_t *rec, const float *w, const float *mag, float scale, int64_t n,
                          int64_t lo, int64_t hi) {
    const __m512 zero = _mm512_setzero_ps();
    int64_t end = whole_blocks_end(n, hi);
    #pragma omp parallel for schedule(static) if ((end - lo) * SIGSYM_BLOCK >= SIGSYM_PAR_MIN)
    for (int64_t j = lo; j < end; ++j) {
        uint64_t pos = 0, neg = 0;
        for (int k = 0; k < SIGSYM_BLOCK / 16; ++k) {
            __m512 v = _mm512_loadu_ps(w + j * SIGSYM_BLOCK + 16 * k);
            pos |= (uint64_t)_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ) << (16 * k);
            neg |= (uint64_t)_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ) << (16 * k);
        }
        settle_block(b, rec, mag, scale, j, SIGSYM_BLOCK, pos, neg);
    }
    resign_portable(b, rec, w, mag, scale, n, end > lo ? end : lo, hi);
}

/* The codes draw written out by hand, 16 (8) words at a time, the tail left to the portable loop: gcc's own
 * vectorization of that loop interleaves the two halves of each word less well. Plain stores, not streaming ones:
 * streaming B past the cache made the draw faster alone but the whole pass slower, as the convolution that reads B
 * next then fetched it from memory. Same arithmetic as the portable loop, so the same numbers. */
__attribute__((target("avx512f")))
static inline __m512i h32_avx512(__m512i x) {
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x21f0aaad));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0xd35a2d97u));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
}

__attribute__((target("avx512f")))
static void fill_codes_avx512(float *out, const int8_t *codes, int64_t j0, int64_t j1, uint32_t k1, uint32_t k2,
                              float scale) {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i low16 = _mm512_set1_epi32(0xffff), one = _mm512_set1_epi32(1);
    const __m512 sc = _mm512_set1_ps(scale);
    int64_t groups = (j1 - j0) / 16;
    #pragma omp parallel for schedule(static) if (32 * groups >= SIGSYM_PAR_MIN)
    for (int64_t g = 0; g < groups; ++g) {
        int64_t j = j0 + 16 * g;
        __m512i x = _mm512_xor_si512(_mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)j), lanes),
                                     _mm512_set1_epi32((int)k1));
        x = h32_avx512(_mm512_add_epi32(h32_avx512(x), _mm512_set1_epi32((int)k2)));
        __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_or_si512(_mm512_and_si512(x, low16), one)), sc);
        __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_or_si512(_mm512_srli_epi32(x, 16), one)), sc);
        __m512 sa = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(codes + 2 * j))));
        __m512 sb = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(codes + 2 * j + 16))));
        _mm512_storeu_ps(out + 2 * j, _mm512_mul_ps(_mm512_permutex2var_ps(lo, first, hi), sa));
        _mm512_storeu_ps(out + 2 * j + 16, _mm512_mul_ps(_mm512_permutex2var_ps(lo, second, hi), sb));
    }
    fill_codes_portable(out, codes, j0 + 16 * groups, j1, k1, k2, scale);
}

__attribute__((target("avx2")))
static inline __m256i h32_avx2(__m256i x) {
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x21f0aaad));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0xd35a2d97u));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
}

__attribute__((target("avx2")))
static void fill_codes_avx2(float *out, const int8_t *codes, int64_t j0, int64_t j1, uint32_t k1, uint32_t k2,
                            float scale) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i low16 = _mm256_set1_epi32(0xffff), one = _mm256_set1_epi32(1);
    const __m256 sc = _mm256_set1_ps(scale);
    int64_t groups = (j1 - j0) / 8;
    #pragma omp parallel for schedule(static) if (16 * groups >= SIGSYM_PAR_MIN)
    for (int64_t g = 0; g < groups; ++g) {
        int64_t j = j0 + 8 * g;
        __m256i x = _mm256_xor_si256(_mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)j), lanes),
                                     _mm256_set1_epi32((int)k1));
        x = h32_avx2(_mm256_add_epi32(h32_avx2(x), _mm256_set1_epi32((int)k2)));
        __m256 lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_or_si256(_mm256_and_si256(x, low16), one)), sc);
        __m256 hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_or_si256(_mm256_srli_epi32(x, 16), one)), sc);
        __m256 a = _mm256_unpacklo_ps(lo, hi), b = _mm256_unpackhi_ps(lo, hi);  /* words 0,1,4,5 and 2,3,6,7 */
        __m256 sa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(codes + 2 * j))));
        __m256 sb = _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(codes + 2 * j + 8))));
        _mm256_storeu_ps(out + 2 * j, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x20), sa));
        _mm256_storeu_ps(out + 2 * j + 8, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x31), sb));
    }
    fill_codes_portable(out, codes, j0 + 8 * groups, j1, k1, k2, scale);
}
#endif

/* The same draw as sigsym_brsf_fill with sign(W) read from its codes: on weights that stay fixed (an attack's steps)
 * W would be read again at every pass, and its 4 bytes per weight, not the hashing, are most of the draw's time
 * once the pass has pushed W out of cache; the codes are 1 byte. Same numbers: (float)code is sgn(w) exactly.
 * Elements [start, stop); start must be even. */
void sigsym_brsf_fill_codes(float *out, const int8_t *codes, int64_t start, int64_t stop, uint32_t k1, uint32_t k2,
                            float scale) {
    int64_t j0 = start >> 1, j1 = stop >> 1;
#ifdef SIGSYM_AVX2
#ifndef SIGSYM_NO_AVX512
    if (__builtin_cpu_supports("avx512f")) {
        fill_codes_avx512(out, codes, j0, j1, k1, k2, scale);
    } else
#endif
    if (__builtin_cpu_supports("avx2")) {
        fill_codes_avx2(out, codes, j0, j1, k1, k2, scale);
    } else
#endif
    {
        fill_codes_portable(out, codes, j0, j1, k1, k2, scale);
    }
    if (stop & 1 && stop - 1 >= start) {
        uint32_t x = h32(h32((uint32_t)j1 ^ k1) + k2);
        out[stop - 1] = mag(x & 0xffffu, scale) * (float)codes[stop - 1];
    }
}

void sigsym_resign(float *b, uint64_t *rec, const float *w, const float *mag, float scale, int64_t n, int64_t lo,
                   int64_t hi) {
#ifdef SIGSYM_AVX2
#ifndef SIGSYM_NO_AVX512 /* the tests build without it to check the AVX2 loop on AVX-512 machines */
    if (__builtin_cpu_supports("avx512f")) {
        resign_avx512(b, rec, w, mag, scale, n, lo, hi);
        return;
    }
#endif
    if (__builtin_cpu_supports("avx2")) {
        resign_avx2(b, rec, w, mag, scale, n, lo, hi);
        return;
    }
#endif
    resign_portable(b, rec, w, mag, scale, n, lo, hi);
}
