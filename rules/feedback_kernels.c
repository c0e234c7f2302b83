/* brSF's per-pass feedback draw on the CPU, fused: out[i] = k_i * sign(w[i]), k_i odd in [1, 65535].
 *
 * One pass that reads W and writes B (once a training step has pushed the weights out of cache, the draw is
 * memory-bound and a separate sign(W) buffer would double its cost); sign follows torch.sign: 0 for 0, -0, NaN.
 *
 * The bits are counter-based: 32-bit word j of a draw is h(h(j ^ k1) + k2), h = Wellons' lowbias32, and holds the
 * 16-bit lanes of elements 2j and 2j+1. (k1, k2) is derived per draw from the stream's 64-bit key and draw number,
 * so no two draws share bits; any slice of a draw can be computed on its own, so threads split the work without
 * changing a number, and the same arithmetic in numpy or torch (rules/streams.py) reproduces it exactly.
 * 32-bit multiplies vectorize on every x86-64 level; target_clones picks AVX2/AVX-512 at run time where present.
 */
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SIGSYM_NO_CLONES)
#define SIGSYM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SIGSYM_CLONES
#endif

static inline float sgn(float v) { return (float)((v > 0.0f) - (v < 0.0f)); }

static inline uint32_t h32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x21f0aaadu;
    x ^= x >> 15;
    x *= 0xd35a2d97u;
    x ^= x >> 15;
    return x;
}

/* Elements [start, stop) of a draw; start must be even. */
SIGSYM_CLONES
void sigsym_brsf_fill(float *out, const float *w, int64_t start, int64_t stop, uint32_t k1, uint32_t k2) {
    int64_t j0 = start >> 1, j1 = stop >> 1;
    for (int64_t j = j0; j < j1; ++j) {
        uint32_t x = h32(h32((uint32_t)j ^ k1) + k2);
        out[2 * j] = (float)(int32_t)((x & 0xffffu) | 1u) * sgn(w[2 * j]);
        out[2 * j + 1] = (float)(int32_t)((x >> 16) | 1u) * sgn(w[2 * j + 1]);
    }
    if (stop & 1 && stop - 1 >= start) {
        uint32_t x = h32(h32((uint32_t)j1 ^ k1) + k2);
        out[stop - 1] = (float)(int32_t)((x & 0xffffu) | 1u) * sgn(w[stop - 1]);
    }
}


/* Bring B = mag * sign(W) (or scale * sign(W) when mag is NULL) up to date after a weight update, rewriting only
 * the entries whose sign changed. A fine-tuning step flips few signs, so this reads W and B and writes almost
 * nothing, where rebuilding B reads W and |M| and writes all of B. */
SIGSYM_CLONES
void sigsym_resign(float *b, const float *w, const float *mag, float scale, int64_t start, int64_t stop) {
    for (int64_t i = start; i < stop; ++i) {
        float s = sgn(w[i]);
        if (s != sgn(b[i]) || (s != 0.0f && b[i] == 0.0f)) {
            b[i] = (mag ? mag[i] : scale) * s;
        }
    }
}
