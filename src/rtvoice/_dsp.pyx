# cython: language_level=3
"""rtvoice's compiled audio core.

G.711 μ-law/A-law codecs (bit-exact with ITU-T G.711 as CPython's ``audioop`` implements it) and the
streaming polyphase resampler kernels.  Use it through :mod:`rtvoice.audio`, which documents the API.

Buffers are taken through the raw buffer protocol (``PyBUF_SIMPLE``/``PyBUF_WRITABLE``): bytes,
bytearray, memoryview and contiguous numpy arrays of any dtype are all seen as contiguous bytes, which
is both format-agnostic (int16 samples may arrive as ``bytes``) and cheaper to acquire than a typed
memoryview with a format check.  Inner loops are plain C over raw pointers and run without the GIL.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from libc.stdint cimport int16_t, uint8_t, uint16_t
from cpython.exc cimport PyErr_Clear
from libc.string cimport memcpy, memmove, memset

import numpy as np

cdef extern from * nogil:
    """
    #include <stdint.h>
    #include <string.h>

    /* ---- G.711, transcribed from the Sun reference code that CPython's audioop uses ---- */
    static int16_t rtv_ulaw_dec[256];
    static int16_t rtv_alaw_dec[256];
    static uint8_t rtv_ulaw_enc[16384];  /* indexed by the 14 high bits of a sample ((uint16)s >> 2) */
    static uint8_t rtv_alaw_enc[8192];   /* indexed by the 13 high bits of a sample ((uint16)s >> 3) */

    static const int16_t rtv_seg_uend[8] = {0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF};
    static const int16_t rtv_seg_aend[8] = {0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF};

    static int rtv_search(int val, const int16_t *table, int size) {
        for (int i = 0; i < size; i++) if (val <= table[i]) return i;
        return size;
    }

    static uint8_t rtv_14linear2ulaw(int pcm_val) {   /* 2's complement, 14-bit range */
        int mask, seg;
        if (pcm_val < 0) { pcm_val = -pcm_val; mask = 0x7F; } else { mask = 0xFF; }
        if (pcm_val > 32635) pcm_val = 32635;
        pcm_val += (0x84 >> 2);
        seg = rtv_search(pcm_val, rtv_seg_uend, 8);
        if (seg >= 8) return (uint8_t)(0x7F ^ mask);
        return (uint8_t)((((seg << 4) | ((pcm_val >> (seg + 1)) & 0xF)) ^ mask) & 0xFF);
    }

    static uint8_t rtv_linear2alaw(int pcm_val) {     /* 2's complement, 13-bit range */
        int mask, seg, aval;
        if (pcm_val >= 0) { mask = 0xD5; } else { mask = 0x55; pcm_val = -pcm_val - 1; }
        seg = rtv_search(pcm_val, rtv_seg_aend, 8);
        if (seg >= 8) return (uint8_t)(0x7F ^ mask);
        aval = seg << 4;
        if (seg < 2) aval |= (pcm_val >> 1) & 0xF; else aval |= (pcm_val >> seg) & 0xF;
        return (uint8_t)((aval ^ mask) & 0xFF);
    }

    static int16_t rtv_ulaw2linear(uint8_t u_val) {
        int t;
        u_val = (uint8_t)~u_val;
        t = ((u_val & 0x0F) << 3) + 0x84;
        t <<= ((unsigned)u_val & 0x70) >> 4;
        return (int16_t)((u_val & 0x80) ? (0x84 - t) : (t - 0x84));
    }

    static int16_t rtv_alaw2linear(uint8_t a_val) {
        int t, seg;
        a_val ^= 0x55;
        t = (a_val & 0x0F) << 4;
        seg = ((unsigned)a_val & 0x70) >> 4;
        switch (seg) {
        case 0: t += 8; break;
        case 1: t += 0x108; break;
        default: t += 0x108; t <<= seg - 1;
        }
        return (int16_t)((a_val & 0x80) ? t : -t);
    }

    static void rtv_g711_init(void) {
        for (int i = 0; i < 256; i++) {
            rtv_ulaw_dec[i] = rtv_ulaw2linear((uint8_t)i);
            rtv_alaw_dec[i] = rtv_alaw2linear((uint8_t)i);
        }
        for (int i = 0; i < 16384; i++) rtv_ulaw_enc[i] = rtv_14linear2ulaw(i < 8192 ? i : i - 16384);
        for (int i = 0; i < 8192; i++) rtv_alaw_enc[i] = rtv_linear2alaw(i < 4096 ? i : i - 8192);
    }

    /* int16 samples are read/written through memcpy: buffers (e.g. a slice of bytes) may be unaligned. */
    static void rtv_g711_decode(const int16_t *table, const uint8_t *src, uint8_t *dst, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            int16_t s = table[src[i]];
            memcpy(dst + 2 * i, &s, 2);
        }
    }

    static void rtv_g711_encode(const uint8_t *table, int shift, const uint8_t *src, uint8_t *dst,
                                Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t s;
            memcpy(&s, src + 2 * i, 2);
            dst[i] = table[s >> shift];
        }
    }
    /* ---- Resampler kernels ----
     * x is a float32 history buffer; output n of a rational L/M resampler has phase p = nM mod L and newest
     * input b = floor(nM/L): y[n] = sum_t c_p[t] * x[b - Kp + 1 + t] (coefficients reversed per phase and
     * zero-padded at the oldest end to a multiple of 8).  Every output is computed by the same sequence of
     * IEEE operations whatever the chunking, so streaming == one-shot, bit for bit.
     * The kernels are written once (the RTV_KERNELS macro, over GCC/Clang vector extensions) and built twice:
     * 4-lane vectors for the baseline target (SSE2 on x86-64, NEON on arm64) and 8-lane AVX2+FMA vectors,
     * chosen once at import on CPUs that have them.  The default wheel stays portable (no -march=native) yet
     * uses AVX2/FMA where available.  (The macro is one logical line: no line comments inside.) */
    #include <math.h>
    typedef float rtv_v4 __attribute__((vector_size(16)));
    typedef int32_t rtv_v4i __attribute__((vector_size(16)));
    typedef float rtv_v8 __attribute__((vector_size(32)));
    typedef int32_t rtv_v8i __attribute__((vector_size(32)));

    static inline int16_t rtv_to_i16(float v) {
        v = v > 32767.0f ? 32767.0f : (v < -32768.0f ? -32768.0f : v);
        return (int16_t)lrintf(v);
    }

    #define RTV_KERNELS(SUF, V, VI, LN, ATTR) \
    /* clamp, then round to nearest even with the 1.5*2^23 trick (exact for |v| < 2^22), as lrintf does */ \
    ATTR static inline __attribute__((always_inline)) void rtv_round_##SUF(const V *pv, int32_t *dst) { \
        const V zero = {0}; \
        V v = *pv; \
        V hi = zero + 32767.f, lo = zero - 32768.f, magic = zero + 12582912.f; \
        VI m = v > hi; \
        v = (V)((m & (VI)hi) | (~m & (VI)v)); \
        m = v < lo; \
        v = (V)((m & (VI)lo) | (~m & (VI)v)); \
        v = v + magic; \
        VI r = (VI)v - 0x4B400000; \
        memcpy(dst, &r, sizeof(VI)); \
    } \
    ATTR static inline __attribute__((always_inline)) float rtv_hsum_##SUF(const V *acc) { \
        float t[LN]; \
        memcpy(t, acc, sizeof(V)); \
        for (int w = LN / 2; w >= 1; w /= 2) for (int i = 0; i < w; i++) t[i] += t[i + w]; \
        return t[0]; \
    } \
    /* generic: one dot product per output (any L/M), LN-tap blocks alternating between two accumulators; \
       for integer decimation (L == 1) four outputs share each coefficient load */ \
    ATTR static void rtv_dot_##SUF(const float *coef, int Kp, int L, int M, const float *buf, long long T0, \
                                   long long n0, long long n1, uint8_t *out) { \
        long long n = n0; \
        if (L == 1) { \
            for (; n + 4 <= n1; n += 4) { \
                const float *x = buf + (n * M - Kp + 1 - T0); \
                V a0[4] = {{0}}, a1[4] = {{0}}; \
                int k = 0; \
                for (; k + 2 * LN <= Kp; k += 2 * LN) { \
                    V c0, c1; \
                    memcpy(&c0, coef + k, sizeof(V)); memcpy(&c1, coef + k + LN, sizeof(V)); \
                    _Pragma("GCC unroll 4") \
                    for (int g = 0; g < 4; g++) { \
                        V x0, x1; \
                        memcpy(&x0, x + g * M + k, sizeof(V)); memcpy(&x1, x + g * M + k + LN, sizeof(V)); \
                        a0[g] += c0 * x0; a1[g] += c1 * x1; \
                    } \
                } \
                if (k < Kp) { \
                    V c0; \
                    memcpy(&c0, coef + k, sizeof(V)); \
                    _Pragma("GCC unroll 4") \
                    for (int g = 0; g < 4; g++) { V x0; memcpy(&x0, x + g * M + k, sizeof(V)); a0[g] += c0 * x0; } \
                } \
                _Pragma("GCC unroll 4") \
                for (int g = 0; g < 4; g++) { \
                    V acc = a0[g] + a1[g]; \
                    int16_t v = rtv_to_i16(rtv_hsum_##SUF(&acc)); \
                    memcpy(out + 2 * (n + g - n0), &v, 2); \
                } \
            } \
        } \
        for (; n < n1; n++) { \
            long long t = n * M; \
            int p = (int)(t % L); \
            long long b = t / L; \
            const float *x = buf + (b - Kp + 1 - T0); \
            const float *c = coef + (Py_ssize_t)p * Kp; \
            V acc0 = {0}, acc1 = {0}; \
            int k = 0; \
            for (; k + 2 * LN <= Kp; k += 2 * LN) { \
                V c0, x0, c1, x1; \
                memcpy(&c0, c + k, sizeof(V)); memcpy(&x0, x + k, sizeof(V)); \
                memcpy(&c1, c + k + LN, sizeof(V)); memcpy(&x1, x + k + LN, sizeof(V)); \
                acc0 += c0 * x0; acc1 += c1 * x1; \
            } \
            if (k < Kp) { V c0, x0; memcpy(&c0, c + k, sizeof(V)); memcpy(&x0, x + k, sizeof(V)); acc0 += c0 * x0; } \
            acc0 += acc1; \
            int16_t v = rtv_to_i16(rtv_hsum_##SUF(&acc0)); \
            memcpy(out + 2 * (n - n0), &v, 2); \
        } \
    } \
    /* integer upsampling (M == 1, L = 2 or 3): NV*LN consecutive inputs per pass (NV = 3 for L = 3, 4 for \
       L = 2) and all L phases at once, so each input vector load feeds L multiply-adds and 12 or 8 \
       independent accumulator chains hide the latency within 16 vector registers; each lane is one output \
       (no horizontal sum; coefb holds every coefficient replicated 8 times, so the broadcast is a plain vector \
       load: a scalar-to-vector broadcast made the SSE2 build spill through the stack).  The last pass may read up to NV*LN-1 floats past \
       the valid input (the buffer has slack, its contents stay finite); those lanes are discarded. */ \
    ATTR static inline __attribute__((always_inline)) void rtv_up_body_##SUF( \
            const float *coefb, int Kp, int K, const int L, const int NV, const float *buf, long long T0, \
            long long j0, long long j1, uint8_t *out) { \
        int32_t tmp[3][4 * LN]; \
        const int W = NV * LN; \
        for (long long j = j0; j < j1; j += W) { \
            int valid = (int)((j1 - j) < W ? (j1 - j) : W); \
            const float *x = buf + (j - Kp + 1 - T0); \
            V a[3][4] = {{{0}}}; \
            for (int t = Kp - K; t < Kp; t++) { \
                V xv[4]; \
                _Pragma("GCC unroll 4") \
                for (int v = 0; v < NV; v++) memcpy(&xv[v], x + t + LN * v, sizeof(V)); \
                _Pragma("GCC unroll 3") \
                for (int p = 0; p < L; p++) { \
                    V cv; \
                    memcpy(&cv, coefb + 8 * ((Py_ssize_t)p * Kp + t), sizeof(V)); \
                    _Pragma("GCC unroll 4") \
                    for (int v = 0; v < NV; v++) a[p][v] += cv * xv[v]; \
                } \
            } \
            _Pragma("GCC unroll 3") \
            for (int p = 0; p < L; p++) { \
                _Pragma("GCC unroll 4") \
                for (int v = 0; v < NV; v++) rtv_round_##SUF(&a[p][v], tmp[p] + LN * v); \
            } \
            uint8_t *o = out + 2 * (j - j0) * L; \
            for (int i = 0; i < valid; i++) { \
                _Pragma("GCC unroll 3") \
                for (int p = 0; p < L; p++) { int16_t v = (int16_t)tmp[p][i]; memcpy(o + 2 * (i * L + p), &v, 2); } \
            } \
        } \
    } \
    ATTR static void rtv_up_##SUF(const float *coefb, int Kp, int K, int L, const float *buf, long long T0, \
                                  long long j0, long long j1, uint8_t *out) { \
        if (L == 3) rtv_up_body_##SUF(coefb, Kp, K, 3, 3, buf, T0, j0, j1, out); \
        else rtv_up_body_##SUF(coefb, Kp, K, 2, 4, buf, T0, j0, j1, out); \
    } \
    /* integer decimation (L == 1): the input is kept deinterleaved into M streams (d_s[e] = x[T0 + M e + s]), \
       so tap t of outputs j..j+W-1 reads one contiguous run of stream st[t] starting at (j - m0 + qt[t]), \
       where t - Kp + 1 = M qt[t] + st[t].  Lanes are outputs (no horizontal sum), 5 vectors per pass, even \
       and odd taps in separate accumulators (10 independent chains), summed once at the end.  The last \
       pass reads past the valid input into the streams' slack; those lanes are discarded. */ \
    ATTR static void rtv_dec_##SUF(const float *coefb, int Kp, const int *st, const int *qt, const float *dbuf, \
                                   Py_ssize_t S, long long m0, long long j0, long long j1, uint8_t *out) { \
        int32_t tmp[5 * LN]; \
        const int W = 5 * LN; \
        for (long long j = j0; j < j1; j += W) { \
            int valid = (int)((j1 - j) < W ? (j1 - j) : W); \
            const float *base = dbuf + (j - m0); \
            V ae[5] = {{0}}, ao[5] = {{0}}; \
            int t = 0; \
            for (; t + 2 <= Kp; t += 2) { \
                const float *p0 = base + (Py_ssize_t)st[t] * S + qt[t]; \
                const float *p1 = base + (Py_ssize_t)st[t + 1] * S + qt[t + 1]; \
                V c0, c1; \
                memcpy(&c0, coefb + 8 * (Py_ssize_t)t, sizeof(V)); \
                memcpy(&c1, coefb + 8 * (Py_ssize_t)(t + 1), sizeof(V)); \
                _Pragma("GCC unroll 5") \
                for (int v = 0; v < 5; v++) { \
                    V x0, x1; \
                    memcpy(&x0, p0 + LN * v, sizeof(V)); memcpy(&x1, p1 + LN * v, sizeof(V)); \
                    ae[v] += c0 * x0; ao[v] += c1 * x1; \
                } \
            } \
            if (t < Kp) { \
                const float *p0 = base + (Py_ssize_t)st[t] * S + qt[t]; \
                V c0; \
                memcpy(&c0, coefb + 8 * (Py_ssize_t)t, sizeof(V)); \
                _Pragma("GCC unroll 5") \
                for (int v = 0; v < 5; v++) { V x0; memcpy(&x0, p0 + LN * v, sizeof(V)); ae[v] += c0 * x0; } \
            } \
            _Pragma("GCC unroll 5") \
            for (int v = 0; v < 5; v++) { V r = ae[v] + ao[v]; rtv_round_##SUF(&r, tmp + LN * v); } \
            uint8_t *o = out + 2 * (j - j0); \
            for (int i = 0; i < valid; i++) { int16_t v = (int16_t)tmp[i]; memcpy(o + 2 * i, &v, 2); } \
        } \
    }

    RTV_KERNELS(base, rtv_v4, rtv_v4i, 4, )

    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__AVX2__)
    #define RTV_DISPATCH 1
    RTV_KERNELS(avx2, rtv_v8, rtv_v8i, 8, __attribute__((target("avx2,fma"))))
    #endif

    typedef void (*rtv_dot_fn)(const float *, int, int, int, const float *, long long, long long, long long,
                               uint8_t *);
    typedef void (*rtv_up_fn)(const float *, int, int, int, const float *, long long, long long, long long,
                              uint8_t *);
    typedef void (*rtv_dec_fn)(const float *, int, const int *, const int *, const float *, Py_ssize_t,
                               long long, long long, long long, uint8_t *);
    static rtv_dot_fn rtv_dot = rtv_dot_base;
    static rtv_up_fn rtv_up = rtv_up_base;
    static rtv_dec_fn rtv_dec = rtv_dec_base;

    static int rtv_select_kernels(int allow_simd) {
    #ifdef RTV_DISPATCH
        __builtin_cpu_init();
        if (allow_simd && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            rtv_dot = rtv_dot_avx2; rtv_up = rtv_up_avx2; rtv_dec = rtv_dec_avx2; return 1;
        }
    #endif
        rtv_dot = rtv_dot_base; rtv_up = rtv_up_base; rtv_dec = rtv_dec_base; return 0;
    }

    static void rtv_ulaw_to_f32(const uint8_t *src, float *dst, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) dst[i] = (float)rtv_ulaw_dec[src[i]];
    }

    /* append n samples (int16 or μ-law) to M deinterleaved streams, starting at stream s, element e: a scalar
     * head up to the next whole group of M, whole groups with M a compile-time constant for the common
     * decimations (so the compiler unrolls/vectorises the de-interleave), then a scalar tail */
    static inline float rtv_sample(const uint8_t *src, int ulaw, Py_ssize_t i) {
        if (ulaw) return (float)rtv_ulaw_dec[src[i]];
        int16_t x; memcpy(&x, src + 2 * i, 2); return (float)x;
    }
    static inline __attribute__((always_inline)) void rtv_append_groups(
            const uint8_t *src, int ulaw, Py_ssize_t groups, float *dbuf, Py_ssize_t S, const int M, Py_ssize_t e) {
        if (ulaw) {
            for (Py_ssize_t g = 0; g < groups; g++)
                for (int s = 0; s < M; s++) dbuf[(Py_ssize_t)s * S + e + g] = (float)rtv_ulaw_dec[src[g * M + s]];
        } else {
            for (Py_ssize_t g = 0; g < groups; g++)
                for (int s = 0; s < M; s++) {
                    int16_t x; memcpy(&x, src + 2 * (g * M + s), 2);
                    dbuf[(Py_ssize_t)s * S + e + g] = (float)x;
                }
        }
    }
    static void rtv_append_streams(const uint8_t *src, int ulaw, Py_ssize_t n, float *dbuf, Py_ssize_t S, int M,
                                   int s, Py_ssize_t e) {
        const int w = ulaw ? 1 : 2;
        Py_ssize_t i = 0;
        while (s != 0 && i < n) {
            dbuf[(Py_ssize_t)s * S + e] = rtv_sample(src, ulaw, i++);
            if (++s == M) { s = 0; e++; }
        }
        Py_ssize_t groups = (n - i) / M;
        switch (M) {
        case 2: rtv_append_groups(src + w * i, ulaw, groups, dbuf, S, 2, e); break;
        case 3: rtv_append_groups(src + w * i, ulaw, groups, dbuf, S, 3, e); break;
        default: rtv_append_groups(src + w * i, ulaw, groups, dbuf, S, M, e); break;
        }
        i += groups * M;
        e += groups;
        while (i < n) {
            dbuf[(Py_ssize_t)s * S + e] = rtv_sample(src, ulaw, i++);
            if (++s == M) { s = 0; e++; }
        }
    }

    static void rtv_i16_to_f32(const uint8_t *src, float *dst, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) { int16_t s; memcpy(&s, src + 2 * i, 2); dst[i] = (float)s; }
    }
    """
    int16_t rtv_ulaw_dec[256]
    int16_t rtv_alaw_dec[256]
    uint8_t rtv_ulaw_enc[16384]
    uint8_t rtv_alaw_enc[8192]
    void rtv_g711_init()
    void rtv_g711_decode(const int16_t *table, const uint8_t *src, uint8_t *dst, Py_ssize_t n)
    void rtv_g711_encode(const uint8_t *table, int shift, const uint8_t *src, uint8_t *dst, Py_ssize_t n)
    void rtv_dot(const float *coef, int Kp, int L, int M, const float *buf, long long T0,
                 long long n0, long long n1, uint8_t *out)
    void rtv_up(const float *coefb, int Kp, int K, int L, const float *buf, long long T0,
                long long j0, long long j1, uint8_t *out)
    int rtv_select_kernels(int allow_simd)
    void rtv_dec(const float *coefb, int Kp, const int *st, const int *qt, const float *dbuf, Py_ssize_t S,
                 long long m0, long long j0, long long j1, uint8_t *out)
    void rtv_append_streams(const uint8_t *src, int ulaw, Py_ssize_t n, float *dbuf, Py_ssize_t S, int M,
                            int s, Py_ssize_t e)
    void rtv_i16_to_f32(const uint8_t *src, float *dst, Py_ssize_t n)
    void rtv_ulaw_to_f32(const uint8_t *src, float *dst, Py_ssize_t n)

rtv_g711_init()

import os as _os

#: 1 when the AVX2+FMA resampler kernels were selected at import (``RTVOICE_DSP_BASELINE=1`` forces the
#: baseline kernels, e.g. to compare them).
SIMD_KERNELS = rtv_select_kernels(0 if _os.environ.get("RTVOICE_DSP_BASELINE", "") == "1" else 1)

CORE_VERSION = 2

# Loops shorter than this (in bytes/codes) keep the GIL: releasing and re-taking it costs ~30-40 ns, more
# than a 20 ms frame's codec loop; long buffers (files, bursts) release it so other threads run meanwhile.
DEF _NOGIL_MIN = 16384


cdef extern from "Python.h":
    # declared without an exception clause: the fast path tests the result itself, and only the error path
    # (below) pays for turning BufferError/TypeError into the documented ValueError
    int _GetBuffer "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags)


cdef int _buffer_error(object obj, int flags, str message) except -1:
    cdef Py_buffer view
    PyErr_Clear()  # drop the pending error; asking again (checked, deterministic) gives it as an exception
    try:
        PyObject_GetBuffer(obj, &view, flags)
    except (BufferError, TypeError, ValueError) as exc:
        raise ValueError(f"{message}, got {type(obj).__name__}: {exc}") from None
    PyBuffer_Release(&view)
    raise ValueError(f"{message}, got {type(obj).__name__}")


cdef inline int _get_in(object obj, Py_buffer *view, str what) except -1:
    if _GetBuffer(obj, view, PyBUF_SIMPLE) == 0:
        return 0
    return _buffer_error(obj, PyBUF_SIMPLE, f"{what}: expected a C-contiguous buffer (bytes, bytearray, memoryview, numpy array)")


cdef inline int _get_out(object obj, Py_buffer *view) except -1:
    if _GetBuffer(obj, view, PyBUF_SIMPLE | PyBUF_WRITABLE) == 0:
        return 0
    return _buffer_error(obj, PyBUF_SIMPLE | PyBUF_WRITABLE, "out: expected a writable C-contiguous buffer (bytearray, memoryview, numpy array)")


cdef object _decode(const int16_t *table, object src, object out):
    cdef Py_buffer sv, ov
    cdef Py_ssize_t n
    _get_in(src, &sv, "src")
    try:
        n = sv.len
        if out is None:
            out = np.empty(n, dtype=np.int16)
        _get_out(out, &ov)
        try:
            if ov.len != 2 * n:
                raise ValueError(f"out has {ov.len} bytes; decoding {n} codes needs exactly {2 * n} bytes "
                                 f"({n} int16 samples)")
            if n >= _NOGIL_MIN:
                with nogil:
                    rtv_g711_decode(table, <const uint8_t *>sv.buf, <uint8_t *>ov.buf, n)
            else:
                rtv_g711_decode(table, <const uint8_t *>sv.buf, <uint8_t *>ov.buf, n)
        finally:
            PyBuffer_Release(&ov)
    finally:
        PyBuffer_Release(&sv)
    return out


cdef object _encode(const uint8_t *table, int shift, object samples, object out):
    cdef Py_buffer sv, ov
    cdef Py_ssize_t n
    _get_in(samples, &sv, "samples")
    try:
        if sv.len & 1:
            raise ValueError(f"samples has an odd byte length ({sv.len}); int16 samples need 2 bytes each")
        n = sv.len // 2
        if out is None:
            out = bytearray(n)
        _get_out(out, &ov)
        try:
            if ov.len != n:
                raise ValueError(f"out has {ov.len} bytes; encoding {n} samples needs exactly {n} bytes")
            if n >= _NOGIL_MIN:
                with nogil:
                    rtv_g711_encode(table, shift, <const uint8_t *>sv.buf, <uint8_t *>ov.buf, n)
            else:
                rtv_g711_encode(table, shift, <const uint8_t *>sv.buf, <uint8_t *>ov.buf, n)
        finally:
            PyBuffer_Release(&ov)
    finally:
        PyBuffer_Release(&sv)
    return out


def ulaw_decode(src, out=None):
    """μ-law codes -> int16 samples (see rtvoice.audio.ulaw_decode)."""
    return _decode(rtv_ulaw_dec, src, out)


def alaw_decode(src, out=None):
    """A-law codes -> int16 samples (see rtvoice.audio.alaw_decode)."""
    return _decode(rtv_alaw_dec, src, out)


def ulaw_encode(samples, out=None):
    """int16 samples -> μ-law codes (see rtvoice.audio.ulaw_encode)."""
    return _encode(rtv_ulaw_enc, 2, samples, out)


def alaw_encode(samples, out=None):
    """int16 samples -> A-law codes (see rtvoice.audio.alaw_encode)."""
    return _encode(rtv_alaw_enc, 3, samples, out)


# ---------------------------------------------------------------------------------------------------------
# Resampler

from math import gcd as _gcd

#: rate pairs the resampler supports: any pair of 8000/16000/24000, and the common file/TTS rates down to
#: 8000/16000 (22050 is what local TTS engines emit).
_CALL_RATES = (8000, 16000, 24000)
_FILE_RATES = (11025, 22050, 32000, 44100, 48000)
SUPPORTED_PAIRS = frozenset(
    [(a, b) for a in _CALL_RATES for b in _CALL_RATES if a != b]
    + [(a, b) for a in _FILE_RATES for b in (8000, 16000)]
)

# Filter design (Kaiser-windowed sinc), relative to the lower of the two rates ("low"): passband to
# 0.425*low (3.4 kHz at 8 kHz), stopband from 0.625*low (5 kHz), cutoff 0.52*low, beta 8.0, and 27 taps per
# (prototype rate / low).  At 24 kHz that is 81 taps: passband within 1.2e-4 (0.001 dB) of unity to 3.4 kHz
# (the 8k->24k->8k round trip needs that for 70 dB SNR), <= -81.7 dB from 5 kHz, <= -94.9 dB from 7 kHz,
# group delay 40 samples = 1.67 ms.  Chosen by a search for the shortest filter meeting the issue's targets
# (the per-frame cost is proportional to the taps).
_PASS = 0.425
_STOP = 0.625
_CUTOFF = 0.52
_BETA = 8.0
_TAPS_PER_RATIO = 27.0

_design_cache = {}


def design_filter(int in_rate, int out_rate):
    """Design (or fetch from the per-pair cache) the polyphase filter for ``in_rate -> out_rate``.

    Returns ``(L, M, K, coef, delay_ms)``: up by L, down by M, K taps per phase, ``coef`` the float32
    (L, Kp) array of per-phase coefficients reversed and zero-padded at the oldest end to Kp (multiple of 8).
    """
    key = (in_rate, out_rate)
    hit = _design_cache.get(key)
    if hit is not None:
        return hit
    if key not in SUPPORTED_PAIRS:
        raise ValueError(
            f"unsupported resampling {in_rate} -> {out_rate} Hz; supported: "
            + ", ".join(f"{a}->{b}" for a, b in sorted(SUPPORTED_PAIRS))
        )
    g = _gcd(in_rate, out_rate)
    L, M = out_rate // g, in_rate // g
    proto_rate = L * in_rate
    low = min(in_rate, out_rate)
    half = int(_TAPS_PER_RATIO * proto_rate / low / 2.0)
    N = 2 * half + 1
    n = np.arange(N, dtype=np.float64) - half
    fc = _CUTOFF * low / proto_rate  # cycles per prototype sample
    h = 2.0 * fc * np.sinc(2.0 * fc * n) * np.kaiser(N, _BETA)
    h *= L / h.sum()  # unity gain after zero-stuffing by L
    K = -(-N // L)
    Kp = -(-K // 8) * 8
    padded = np.zeros(K * L, dtype=np.float64)
    padded[:N] = h
    # phase p, tap k multiplies x[b - k]:  g_p[k] = h[p + L*k]; reversed so memory runs oldest -> newest
    phases = padded.reshape(K, L).T[:, ::-1]
    coef = np.zeros((L, Kp), dtype=np.float32)
    coef[:, Kp - K:] = phases
    delay_ms = 1000.0 * half / proto_rate
    result = (L, M, K, coef, delay_ms)
    _design_cache[key] = result
    return result


DEF _PIECE = 4096      # inputs handled per inner step (bounds the history buffer)
DEF _SLACK = 64        # floats past the valid input the upsampling kernel may read


cdef class Resampler:
    """Streaming polyphase FIR resampler (see rtvoice.audio.Resampler)."""

    cdef readonly int in_rate
    cdef readonly int out_rate
    cdef readonly double delay_ms
    cdef int L, M, K, Kp
    cdef object _coef
    cdef const float *coef
    cdef object _coefb
    cdef const float *coefb
    cdef object _buf
    cdef float *buf
    cdef object _scratch
    cdef uint8_t *scratch
    cdef long long T, T0, nout
    # integer decimation (L == 1, M > 1): deinterleaved streams instead of buf (see rtv_dec)
    cdef bint dec
    cdef object _dbuf, _st, _qt
    cdef float *dbuf
    cdef const int *st
    cdef const int *qt
    cdef Py_ssize_t S

    def __cinit__(self, int in_rate, int out_rate):
        cdef float[:, ::1] cv
        cdef float[::1] bv, cbv
        cdef uint8_t[::1] sv
        cdef int[::1] stv, qtv
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.L, self.M, self.K, coef, self.delay_ms = design_filter(in_rate, out_rate)
        self.Kp = coef.shape[1]
        self._coef = coef
        cv = coef
        self.coef = &cv[0, 0]
        # the upsampling kernel's coefficients, each replicated 8 times (see rtv_up_body)
        self._coefb = np.ascontiguousarray(np.repeat(coef.reshape(-1), 8), dtype=np.float32)
        cbv = self._coefb
        self.coefb = &cbv[0]
        self._buf = np.zeros(self.Kp + _PIECE + _SLACK + 8, dtype=np.float32)
        bv = self._buf
        self.buf = &bv[0]
        # int16 outputs of one piece before μ-law encoding (L/M <= 3 for every supported pair)
        self._scratch = np.zeros(2 * (3 * _PIECE + 64), dtype=np.uint8)
        sv = self._scratch
        self.scratch = &sv[0]
        self.dec = self.L == 1 and self.M > 1
        if self.dec:
            offsets = np.arange(self.Kp) - self.Kp + 1  # tap t reads x[j*M + offsets[t]]
            self._st = np.ascontiguousarray(offsets % self.M, dtype=np.intc)
            self._qt = np.ascontiguousarray(offsets // self.M, dtype=np.intc)
            stv = self._st
            qtv = self._qt
            self.st = &stv[0]
            self.qt = &qtv[0]
            self.S = (self.Kp + self.M + _PIECE) // self.M + 2 + _SLACK
            self._dbuf = np.zeros(self.M * self.S, dtype=np.float32)
            bv = self._dbuf
            self.dbuf = &bv[0]
        self.reset()

    def reset(self):
        """Forget all history: the next sample is treated as the first of a new stream."""
        self._buf[:] = 0
        self.T = 0
        self.T0 = -(self.Kp - 1)
        self.nout = 0
        if self.dec:
            self._dbuf[:] = 0
            self.T0 = -self.M * ((self.Kp - 1 + self.M - 1) // self.M)  # a multiple of M

    @property
    def ratio(self):
        """(L, M): the resampler produces L outputs per M inputs."""
        return (self.L, self.M)

    @property
    def taps(self):
        """Filter taps per output sample."""
        return self.K

    cpdef Py_ssize_t output_size(self, Py_ssize_t n_samples):
        """How many samples ``process`` returns for the next chunk of ``n_samples`` input samples."""
        cdef long long T = self.T + n_samples
        return <Py_ssize_t>((T * self.L + self.M - 1) // self.M - self.nout)

    cdef void _run(self, const uint8_t *src, Py_ssize_t n_in, uint8_t *dst, bint in_ulaw,
                   bint out_ulaw) noexcept nogil:
        cdef Py_ssize_t done = 0, piece, made
        cdef Py_ssize_t width_out = 1 if out_ulaw else 2
        cdef long long n_end, b_next, T0n
        cdef uint8_t *kdst
        cdef long long off, shift, keep
        cdef int sidx
        if self.dec:
            while done < n_in:
                piece = n_in - done
                if piece > _PIECE:
                    piece = _PIECE
                off = self.T - self.T0
                rtv_append_streams(src + (done if in_ulaw else 2 * done), in_ulaw, piece, self.dbuf, self.S,
                                   self.M, <int>(off % self.M), <Py_ssize_t>(off // self.M))
                self.T += piece
                done += piece
                n_end = (self.T + self.M - 1) // self.M
                if n_end > self.nout:
                    made = <Py_ssize_t>(n_end - self.nout)
                    kdst = self.scratch if out_ulaw else dst
                    rtv_dec(self.coefb, self.Kp, self.st, self.qt, self.dbuf, self.S, self.T0 // self.M,
                            self.nout, n_end, kdst)
                    if out_ulaw:
                        rtv_g711_encode(rtv_ulaw_enc, 2, self.scratch, dst, made)
                    dst += width_out * made
                    self.nout = n_end
                # keep the streams from the first sample the next output needs (rounded down to a multiple of M)
                b_next = n_end * self.M - self.Kp + 1
                T0n = b_next - (b_next % self.M + self.M) % self.M  # floor to a multiple of M
                if T0n > self.T0:
                    shift = (T0n - self.T0) // self.M
                    keep = (self.T - T0n + self.M - 1) // self.M
                    for sidx in range(self.M):
                        memmove(self.dbuf + sidx * self.S, self.dbuf + sidx * self.S + shift,
                                keep * sizeof(float))
                    self.T0 = T0n
            return
        while done < n_in:
            piece = n_in - done
            if piece > _PIECE:
                piece = _PIECE
            if in_ulaw:
                rtv_ulaw_to_f32(src + done, self.buf + (self.T - self.T0), piece)
            else:
                rtv_i16_to_f32(src + 2 * done, self.buf + (self.T - self.T0), piece)
            self.T += piece
            done += piece
            n_end = (self.T * self.L + self.M - 1) // self.M
            if n_end > self.nout:
                made = <Py_ssize_t>(n_end - self.nout)
                kdst = self.scratch if out_ulaw else dst
                if self.M == 1:
                    rtv_up(self.coefb, self.Kp, self.K, self.L, self.buf, self.T0,
                           self.nout // self.L, self.T, kdst)
                else:
                    rtv_dot(self.coef, self.Kp, self.L, self.M, self.buf, self.T0,
                            self.nout, n_end, kdst)
                if out_ulaw:
                    rtv_g711_encode(rtv_ulaw_enc, 2, self.scratch, dst, made)
                dst += width_out * made
                self.nout = n_end
            # keep only the history the next output needs
            b_next = (n_end * self.M) // self.L
            T0n = b_next - self.Kp + 1
            if T0n > self.T:
                T0n = self.T
            if T0n > self.T0:
                memmove(self.buf, self.buf + (T0n - self.T0), (self.T - T0n) * sizeof(float))
                self.T0 = T0n

    cdef object _process(self, object samples, object out, bint in_ulaw, bint out_ulaw):
        cdef Py_buffer sv, ov
        cdef Py_ssize_t n_in, n_out, width_in, width_out
        width_in = 1 if in_ulaw else 2
        width_out = 1 if out_ulaw else 2
        _get_in(samples, &sv, "samples")
        try:
            if not in_ulaw and sv.len & 1:
                raise ValueError(f"samples has an odd byte length ({sv.len}); int16 samples need 2 bytes each")
            n_in = sv.len // width_in
            n_out = self.output_size(n_in)
            if out is None:
                out = bytearray(n_out) if out_ulaw else np.empty(n_out, dtype=np.int16)
            _get_out(out, &ov)
            try:
                if ov.len != width_out * n_out:
                    raise ValueError(f"out has {ov.len} bytes; this chunk of {n_in} samples resamples to "
                                     f"{n_out} samples, so out needs exactly {width_out * n_out} bytes")
                if n_in >= _NOGIL_MIN // 8:
                    with nogil:
                        self._run(<const uint8_t *>sv.buf, n_in, <uint8_t *>ov.buf, in_ulaw, out_ulaw)
                else:
                    self._run(<const uint8_t *>sv.buf, n_in, <uint8_t *>ov.buf, in_ulaw, out_ulaw)
            finally:
                PyBuffer_Release(&ov)
        finally:
            PyBuffer_Release(&sv)
        return out

    def process(self, samples, out=None):
        """Resample int16 ``samples`` (any buffer) into a new int16 numpy array or the given ``out``."""
        return self._process(samples, out, False, False)

    def process_ulaw(self, codes, out=None):
        """Decode μ-law ``codes`` and resample them in one pass: int16 out (numpy array or ``out``)."""
        return self._process(codes, out, True, False)

    def process_to_ulaw(self, samples, out=None):
        """Resample int16 ``samples`` and encode the result to μ-law in one pass (bytearray or ``out``)."""
        return self._process(samples, out, False, True)


# ---------------------------------------------------------------------------------------------------------
# Outbound playout ring

cdef class PlayoutBuffer:
    """Outbound μ-law playout ring: bursts in, fixed frames out (see rtvoice.audio.PlayoutBuffer)."""

    cdef readonly Py_ssize_t frame_size
    cdef readonly Py_ssize_t capacity
    cdef readonly str overflow
    cdef readonly long long total_written
    cdef readonly long long total_read
    cdef readonly long long total_cleared
    cdef readonly long long total_dropped
    cdef readonly Py_ssize_t underruns
    cdef unsigned char silence
    cdef bint drop_oldest
    cdef object _ring
    cdef unsigned char *ring
    cdef Py_ssize_t head, count

    def __cinit__(self, Py_ssize_t frame_size=160, Py_ssize_t capacity=8000 * 60, str overflow="raise",
                  int silence=0xFF):
        cdef unsigned char[::1] rv
        if frame_size < 1:
            raise ValueError(f"frame_size must be >= 1, got {frame_size}")
        if capacity < frame_size:
            raise ValueError(f"capacity ({capacity}) must hold at least one frame ({frame_size})")
        if overflow not in ("raise", "drop_oldest"):
            raise ValueError(f"overflow must be 'raise' or 'drop_oldest', got {overflow!r}")
        if not 0 <= silence <= 255:
            raise ValueError(f"silence must be a byte value, got {silence}")
        self.frame_size = frame_size
        self.capacity = capacity
        self.overflow = overflow
        self.drop_oldest = overflow == "drop_oldest"
        self.silence = <unsigned char>silence
        self._ring = np.zeros(capacity, dtype=np.uint8)
        rv = self._ring
        self.ring = &rv[0]
        self.head = 0
        self.count = 0

    def __len__(self):
        return self.count

    @property
    def available(self):
        """Bytes buffered and not yet read."""
        return self.count

    @property
    def free(self):
        """Bytes that can be pushed before the overflow policy applies."""
        return self.capacity - self.count

    cdef inline void _write(self, const unsigned char *src, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t tail = (self.head + self.count) % self.capacity
        cdef Py_ssize_t first = self.capacity - tail
        if first > n:
            first = n
        memcpy(self.ring + tail, src, first)
        if n > first:
            memcpy(self.ring, src + first, n - first)
        self.count += n

    cdef inline void _read(self, unsigned char *dst, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t first = self.capacity - self.head
        if first > n:
            first = n
        memcpy(dst, self.ring + self.head, first)
        if n > first:
            memcpy(dst + first, self.ring, n - first)
        self.head = (self.head + n) % self.capacity
        self.count -= n

    cdef inline void _discard(self, Py_ssize_t n) noexcept nogil:
        self.head = (self.head + n) % self.capacity
        self.count -= n

    def push(self, data):
        """Append μ-law bytes (any buffer); returns how many older bytes were dropped (drop_oldest)."""
        cdef Py_buffer v
        cdef Py_ssize_t n, drop = 0
        cdef const unsigned char *src
        _get_in(data, &v, "data")
        try:
            n = v.len
            src = <const unsigned char *>v.buf
            if n > self.capacity - self.count:
                if not self.drop_oldest:
                    raise OverflowError(f"playout buffer full: {self.count} of {self.capacity} bytes buffered, "
                                        f"cannot add {n}; nothing was written")
                if n > self.capacity:  # only the newest `capacity` bytes can survive
                    drop = self.count + (n - self.capacity)
                    self.total_written += n - self.capacity
                    src += n - self.capacity
                    n = self.capacity
                    self._discard(self.count)
                else:
                    drop = n - (self.capacity - self.count)
                    self._discard(drop)
                self.total_dropped += drop
            self._write(src, n)
            self.total_written += n
        finally:
            PyBuffer_Release(&v)
        return drop

    cpdef Py_ssize_t pop_into(self, object out, bint pad=False) except -1:
        """Write the next frame into ``out`` (exactly frame_size writable bytes); returns the audio bytes in it.

        With fewer than frame_size bytes buffered: without ``pad`` nothing is read and 0 is returned; with
        ``pad`` what is buffered is read and the rest of the frame is μ-law silence (counted as an underrun).
        """
        cdef Py_buffer ov
        cdef Py_ssize_t n
        _get_out(out, &ov)
        try:
            if ov.len != self.frame_size:
                raise ValueError(f"out has {ov.len} bytes; a frame is exactly {self.frame_size} bytes")
            n = self.count
            if n >= self.frame_size:
                n = self.frame_size
            elif not pad:
                return 0
            else:
                memset(<unsigned char *>ov.buf + n, self.silence, self.frame_size - n)
                self.underruns += 1
            self._read(<unsigned char *>ov.buf, n)
            self.total_read += n
            return n
        finally:
            PyBuffer_Release(&ov)

    def pop(self, bint pad=False):
        """The next frame as a new bytearray, or None when less than a frame is buffered and not ``pad``."""
        cdef object out
        if self.count < self.frame_size and not pad:
            return None
        out = bytearray(self.frame_size)
        self.pop_into(out, pad)
        return out

    def read(self, Py_ssize_t n=-1):
        """Up to ``n`` buffered bytes (all when n < 0) as bytes, e.g. to drain the tail of a response."""
        cdef object out
        cdef unsigned char[::1] ov
        if n < 0 or n > self.count:
            n = self.count
        out = bytearray(n)
        if n:
            ov = out
            self._read(&ov[0], n)
            self.total_read += n
        return bytes(out)

    def clear(self):
        """Discard everything buffered (barge-in); returns the number of bytes discarded."""
        cdef Py_ssize_t n = self.count
        self._discard(n)
        self.head = 0
        self.total_cleared += n
        return n


# ---------------------------------------------------------------------------------------------------------
# Inbound jitter/reorder buffer

cdef class InboundJitter:
    """Orders inbound frames by sequence number and fills gaps with silence (see rtvoice.audio.InboundJitter)."""

    cdef readonly int window
    cdef readonly Py_ssize_t frame_size
    cdef readonly int max_fill
    cdef readonly long long frames_in
    cdef readonly long long frames_out
    cdef readonly long long gaps
    cdef readonly long long filled
    cdef readonly long long late
    cdef readonly long long duplicates
    cdef readonly long long resyncs
    cdef object _expected
    cdef dict _pending
    cdef bytes _silence

    def __cinit__(self, Py_ssize_t frame_size=160, int window=3, int max_fill=250, int silence=0xFF):
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        if frame_size < 1:
            raise ValueError(f"frame_size must be >= 1, got {frame_size}")
        if max_fill < 0:
            raise ValueError(f"max_fill must be >= 0, got {max_fill}")
        self.window = window
        self.frame_size = frame_size
        self.max_fill = max_fill
        self._silence = bytes([silence]) * frame_size
        self._expected = None
        self._pending = {}

    @property
    def expected(self):
        """The sequence number released next (None before the first frame)."""
        return self._expected

    @property
    def pending(self):
        """Frames held back waiting for a missing earlier frame."""
        return len(self._pending)

    cdef _release_until_blocked(self, list out):
        cdef object seq = self._expected
        cdef dict pending = self._pending
        while seq in pending:
            out.append((seq, pending.pop(seq), False))
            seq += 1
        self._expected = seq

    cdef _fill_to(self, object s, list out, bint fill):
        # the hole from the next expected frame up to ``s`` (the oldest held frame) is given up on: released as
        # μ-law silence (``fill``) or skipped (a resync), then the held frames from ``s`` on that are in order
        cdef object exp = self._expected
        if s > exp:
            self.gaps += 1
            if fill:
                self.filled += s - exp
                while exp < s:
                    out.append((exp, self._silence, True))
                    exp += 1
        self._expected = s
        self._release_until_blocked(out)

    def push(self, seq, payload):
        """Add inbound frame number ``seq``; returns the frames now released, in order.

        Each released item is ``(seq, payload, filled)``; ``filled`` is True for μ-law silence standing in
        for a frame that never arrived.  A frame older than the next one to release is counted as late (or
        as a duplicate when it is pending already) and dropped.
        """
        cdef list out = []
        cdef object exp = self._expected
        cdef object last, s
        cdef bint fill
        self.frames_in += 1
        if exp is None:
            self._expected = exp = seq
        if seq == exp:  # the common case: in order, straight through
            out.append((seq, payload, False))
            self._expected = seq + 1
            if self._pending:
                self._release_until_blocked(out)
            self.frames_out += len(out)
            return out
        if seq < exp:
            self.late += 1
            return out
        if seq in self._pending:
            self.duplicates += 1
            return out
        self._pending[seq] = payload
        last = max(self._pending)
        if last - exp >= self.window:
            # the missing frame(s) did not arrive within the window: fill the holes up to the oldest held frame
            s = min(self._pending)
            fill = s - exp <= self.max_fill
            if not fill:
                self.resyncs += 1  # a jump too long to fill (e.g. a restarted counter): skip ahead
            self._fill_to(s, out, fill)
            # later holes inside the window may now also be overdue
            while self._pending and max(self._pending) - self._expected >= self.window:
                self._fill_to(min(self._pending), out, True)
        self.frames_out += len(out)
        return out

    def flush(self):
        """Release everything held (end of stream), filling holes with silence."""
        cdef list out = []
        while self._pending:
            self._fill_to(min(self._pending), out, True)
        self.frames_out += len(out)
        return out


# =====================================================================================================
# ECHO CANCELLATION: bulk-delay estimator + short NLMS + double-talk detector + residual suppressor.
# Owned by the echo/barge-in work (issue 6); self-contained section, documented in :mod:`rtvoice.echo`.
# =====================================================================================================

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.buffer cimport PyObject_GetBuffer as _ec_getbuf, PyBuffer_Release as _ec_release
from cpython.buffer cimport PyBUF_SIMPLE as _EC_SIMPLE, PyBUF_WRITABLE as _EC_WRITABLE
from libc.math cimport sqrtf, fabsf, sqrt, log10
from libc.string cimport memmove as _ec_memmove, memset as _ec_memset


cdef int _ec_buf(object obj, Py_buffer *view, int flags, str what) except -1:
    try:
        _ec_getbuf(obj, view, flags)
    except (BufferError, TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected a {'writable ' if flags & _EC_WRITABLE else ''}C-contiguous "
                         f"buffer of 160 int16 samples, got {type(obj).__name__}: {exc}") from None
    return 0

cdef extern from * nogil:
    """
    /* echo canceller kernels: dot product and axpy on float32 with GCC/Clang vector extensions (SSE2/NEON
       width), two accumulators so that the reduction is not one long dependency chain; n % 8 == 0 */
    #if defined(__GNUC__)
    typedef float rtv_ec_v4 __attribute__((vector_size(16)));
    static inline float rtv_ec_dot(const float *a, const float *b, int n) {
        rtv_ec_v4 s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0}, va, vb, vc, vd;
        for (int i = 0; i < n; i += 8) {
            memcpy(&va, a + i, 16); memcpy(&vb, b + i, 16);
            memcpy(&vc, a + i + 4, 16); memcpy(&vd, b + i + 4, 16);
            s0 += va * vb; s1 += vc * vd;
        }
        s0 += s1;
        return (s0[0] + s0[1]) + (s0[2] + s0[3]);
    }
    static inline void rtv_ec_axpy(float g, const float *x, float *h, int n) {
        rtv_ec_v4 vg = {g, g, g, g}, vx, vh;
        for (int i = 0; i < n; i += 4) {
            memcpy(&vx, x + i, 16); memcpy(&vh, h + i, 16);
            vh += vg * vx;
            memcpy(h + i, &vh, 16);
        }
    }
    #else
    static inline float rtv_ec_dot(const float *a, const float *b, int n) {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int i = 0; i < n; i += 4) { s0 += a[i] * b[i]; s1 += a[i+1] * b[i+1]; s2 += a[i+2] * b[i+2]; s3 += a[i+3] * b[i+3]; }
        return (s0 + s1) + (s2 + s3);
    }
    static inline void rtv_ec_axpy(float g, const float *x, float *h, int n) {
        for (int i = 0; i < n; i++) h[i] += g * x[i];
    }
    #endif

    /* The two per-sample loops of the canceller as whole-frame kernels (issue 7: ~50 % of the gate's time).
       Each output is computed with exactly the operations, in exactly the order, of the per-sample
       rtv_ec_dot / rtv_ec_axpy calls they replace (bit-identical results, tests/test_echo_fastpath.py); for
       the default 48 taps the filter lives in 12 local vectors for the whole frame instead of being loaded
       (and, in the NLMS, stored) once per sample. */
    #if defined(__GNUC__)
    /* h . x[0..48) with the 48 taps held in 12 vectors: two accumulators over alternate vectors, then the same
       pairwise reduction as rtv_ec_dot (the order every caller relies on for bit-identical results) */
    static inline float rtv_ec_dot48(const rtv_ec_v4 *hv, const float *xi) {
        rtv_ec_v4 va, vb, s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0};
        for (int k = 0; k < 12; k += 2) {
            memcpy(&va, xi + 4 * k, 16); memcpy(&vb, xi + 4 * k + 4, 16);
            s0 += hv[k] * va; s1 += hv[k + 1] * vb;
        }
        s0 += s1;
        return (s0[0] + s0[1]) + (s0[2] + s0[3]);
    }
    #endif
    static void rtv_ec_filter(const float *h, const float *x, int L, int n, float *y) {
    #if defined(__GNUC__)
        if (L == 48) {
            rtv_ec_v4 hv[12];
            memcpy(hv, h, sizeof(hv));
            for (int i = 0; i < n; i++) y[i] = rtv_ec_dot48(hv, x + i);
            return;
        }
    #endif
        for (int i = 0; i < n; i++) y[i] = rtv_ec_dot(h, x + i, L);
    }
    /* sample-by-sample NLMS over one frame: for each i, acc = h.x[i..i+L), g = mu (d[i] - acc) / (norm + reg),
       h += g x[i..i+L), then the window energy norm slides by one sample (clamped at 0) */
    static void rtv_ec_nlms(float *h, const float *x, const int16_t *d, int L, int n, float mu, float reg,
                            float norm) {
    #if defined(__GNUC__)
        if (L == 48) {
            rtv_ec_v4 hv[12], va;
            memcpy(hv, h, sizeof(hv));
            for (int i = 0; i < n; i++) {
                const float *xi = x + i;
                float acc = rtv_ec_dot48(hv, xi);
                float g = (mu * (((float)d[i]) - acc)) / (norm + reg);
                rtv_ec_v4 vg = {g, g, g, g};
                for (int k = 0; k < 12; k++) { memcpy(&va, xi + 4 * k, 16); hv[k] += vg * va; }
                if (i + 1 < n) {
                    norm = (norm + (xi[L] * xi[L])) - (xi[0] * xi[0]);
                    if (norm < 0.0) norm = 0.0;
                }
            }
            memcpy(h, hv, sizeof(hv));
            return;
        }
    #endif
        for (int i = 0; i < n; i++) {
            const float *xi = x + i;
            float acc = rtv_ec_dot(h, xi, L);
            float g = (mu * (((float)d[i]) - acc)) / (norm + reg);
            rtv_ec_axpy(g, xi, h, L);
            if (i + 1 < n) {
                norm = (norm + (xi[L] * xi[L])) - (xi[0] * xi[0]);
                if (norm < 0.0) norm = 0.0;
            }
        }
    }
    /* the bulk-delay estimator's envelope cross-correlation, corr[lag] = lam corr[lag] + sum_b e[b] r[1+b+j]
       with j = nlag-1-lag (r: the reference envelope history, oldest first), 8 lags at a time in registers;
       per lag the same float products summed into a double in the same b order as the reference loop */
    static void rtv_ec_xcorr(const float *e, const float *r, int nb, int nlag, float lam, double *corr) {
        int j = 0;
        for (; j + 8 <= nlag; j += 8) {
            double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int b = 0; b < nb; b++) {
                float eb = e[b];
                const float *rb = r + 1 + b + j;
                for (int t = 0; t < 8; t++) a[t] += (double)(eb * rb[t]);
            }
            for (int t = 0; t < 8; t++) { int lag = nlag - 1 - (j + t); corr[lag] = lam * corr[lag] + a[t]; }
        }
        for (; j < nlag; j++) {
            double a = 0.0;
            for (int b = 0; b < nb; b++) a += (double)(e[b] * r[1 + b + j]);
            int lag = nlag - 1 - j;
            corr[lag] = lam * corr[lag] + a;
        }
    }
    """
    float rtv_ec_dot(const float *a, const float *b, int n)
    void rtv_ec_axpy(float g, const float *x, float *h, int n)
    void rtv_ec_filter(const float *h, const float *x, int L, int n, float *y)
    void rtv_ec_nlms(float *h, const float *x, const int16_t *d, int L, int n, float mu, float reg, float norm)
    void rtv_ec_xcorr(const float *e, const float *r, int nb, int nlag, float lam, double *corr)

cdef enum:
    _EC_FRAME = 160    # samples per 20 ms frame at 8 kHz
    _EC_BLOCK = 16     # envelope block of the bulk-delay estimator (2 ms)
    _EC_BPF = 10       # envelope blocks per frame
    _EC_MAXTAPS = 256
    _EC_XSLACK = 16    # frames of slack in the reference history buffer (see EchoCancellerCore.xoff)
    _EC_F_NEAR = 1
    _EC_F_REF = 2
    _EC_F_LOCK = 4
    _EC_F_ABOVE = 16

#: EchoCancellerCore.process() result bits
EC_NEAR_END = 1      # the double-talk detector says the caller is talking (or no echo is possible)
EC_REF_ACTIVE = 2    # bot audio that can still echo was played within the delay window
EC_LOCKED = 4        # the bulk-delay estimator has locked on the echo delay
EC_ABOVE_BG = 16     # the residual is bg_ratio above the line's background (noise, babble)
EC_MAX_TAPS = _EC_MAXTAPS  # the longest echo filter (taps) EchoCancellerCore takes


cdef class EchoCancellerCore:
    """Acoustic/line echo canceller for one call, one 20 ms frame (160 int16 samples at 8 kHz) at a time.

    ``process(mic, ref, out)``: ``mic`` is what the caller sent, ``ref`` the bot audio played during the same
    20 ms (by the playback ledger), ``out`` receives the echo-reduced frame.  All three are buffers of exactly
    320 bytes (int16, native order); nothing is allocated per frame and the arithmetic runs without the GIL.
    """

    cdef float *xbuf      # reference history, oldest first; the current frame is the last 160 samples
    # (the history is the window xbuf[xoff : xoff + xlen] of a buffer _EC_XSLACK frames longer: appending a
    # frame moves the window instead of the whole 12 KB history, and the history is moved back to the start
    # once every _EC_XSLACK frames. At 400 calls each call's state is cold in the cache at its next frame, and
    # the per-frame memmove of the history was most of the memory traffic of a frame.)
    cdef int xoff, xcap
    cdef int xlen
    cdef float *h         # adaptive taps, time-reversed (h[taps-1] is the tap at the bulk delay)
    cdef float *renv      # mean-removed reference envelope history (nlag + _EC_BPF blocks)
    cdef double *corr     # exponentially weighted envelope cross-correlation per lag (blocks)
    cdef float *eref      # per-frame reference energy ring (frames that can still echo)
    cdef float *e1        # pass-1 residual of the current frame
    cdef float *bener     # reference energy per 2 ms block (nlag + _EC_BPF blocks, like renv)
    cdef float *wwin      # reference energy of the 20 ms window at each lag (blocks) for the current frame
    cdef float *ub        # per-lag upper bound of the echo gain (see _ub_pred)
    cdef float *yest      # scratch: this frame's echo estimate per sample
    #: issue 7 fast paths (default on): whole-frame filter/NLMS kernels, the correlation vectorised over lags,
    #: and the arithmetic skipped where its result is known exactly (taps all zero: no echo estimate; a
    #: reference window all zero: nothing can echo; a silent mic with zero taps: the NLMS step is a no-op).
    #: Off: the per-sample reference code. Both give bit-identical results (tests/test_echo_fastpath.py).
    cdef public bint fast
    #: adapt the NLMS on digitally silent (all-zero) mic frames too (before issue 7 it did; default off)
    cdef public int adapt_on_silence
    cdef int hzero        # the taps are known to be all zero
    cdef int xzero        # trailing zero samples of the reference history (capped at xlen)
    cdef int nref, ref_i
    cdef readonly int taps, max_delay, nlag, delay, pre
    cdef readonly float mu
    cdef float rmean, mmean
    cdef double pm, pr
    cdef float lam
    # double-talk detector state
    cdef readonly double g_max, g_al, noise, dt_ratio, bg
    #: tunables of the double-talk detector (defaults chosen on the quality benchmark's scenario matrix):
    #: mic/echo-estimate ratio of the converged-filter test, rise rate of the residual-echo gains, and how far
    #: above the background a frame must be to count as the caller
    cdef public double ncc_ratio, rise, bg_ratio, veto_ratio, bg_cap_ratio, rise_cap
    cdef public int pass_hang
    #: per-lag echo-gain bound: a microphone ub_ratio above the most pessimistic echo any lag still allows is
    #: the caller (before the filter converges); how fast a bound falls on evidence and rises again per frame
    cdef public double ub_ratio, ub_fall, ub_rise
    cdef public int ub_spread
    cdef readonly double last_pub
    cdef public double pass_ratio
    cdef readonly int n_al, frames, dt_frames, locked, last_flags, since_dt, ref_frames
    cdef readonly double conf
    cdef double s_ed, s_ee
    #: energies of the last frame (sum of squares): mic, residual, echo estimate, aligned reference
    cdef readonly double last_ed, last_ee, last_ey, last_ex

    def __cinit__(self, int taps=48, int max_delay_ms=350, float mu=0.4, float dt_threshold_db=6.0):
        if not 8 <= taps <= _EC_MAXTAPS or taps % 8:
            raise ValueError(f"taps must be a multiple of 8 in 8..{_EC_MAXTAPS}, got {taps}")
        if not 20 <= max_delay_ms <= 1000:
            raise ValueError(f"max_delay_ms must be 20..1000, got {max_delay_ms}")
        if not 0.0 < mu <= 1.0:
            raise ValueError(f"mu must be in (0, 1], got {mu}")
        self.taps = taps
        self.mu = mu
        self.max_delay = max_delay_ms * 8
        self.nlag = self.max_delay // _EC_BLOCK + 1
        self.pre = 8
        self.xlen = self.max_delay + taps + _EC_FRAME + 16
        self.nref = (self.max_delay + taps) // _EC_FRAME + 2
        self.dt_ratio = 10.0 ** (dt_threshold_db / 10.0)
        self.ncc_ratio = 1.6
        self.rise = 0.15
        self.bg_ratio = 8.0
        self.veto_ratio = 1.1
        self.bg_cap_ratio = 6.0
        self.rise_cap = 0.3
        self.pass_hang = 0
        self.pass_ratio = 1.25
        self.ub_ratio = 4.0
        self.ub_fall = 0.9
        self.ub_rise = 1.02
        self.ub_spread = 5
        self.lam = 0.985
        self.xcap = self.xlen + _EC_XSLACK * _EC_FRAME
        self.xbuf = <float *>PyMem_Malloc(self.xcap * sizeof(float))
        self.h = <float *>PyMem_Malloc(taps * sizeof(float))
        self.renv = <float *>PyMem_Malloc((self.nlag + _EC_BPF) * sizeof(float))
        self.corr = <double *>PyMem_Malloc(self.nlag * sizeof(double))
        self.eref = <float *>PyMem_Malloc(self.nref * sizeof(float))
        self.e1 = <float *>PyMem_Malloc(_EC_FRAME * sizeof(float))
        self.bener = <float *>PyMem_Malloc((self.nlag + _EC_BPF) * sizeof(float))
        self.wwin = <float *>PyMem_Malloc((self.nlag + 1) * sizeof(float))
        self.ub = <float *>PyMem_Malloc(self.nlag * sizeof(float))
        self.yest = <float *>PyMem_Malloc(_EC_FRAME * sizeof(float))
        self.fast = 1
        self.adapt_on_silence = 0
        if (self.yest == NULL or self.xbuf == NULL or self.h == NULL or self.renv == NULL or self.corr == NULL
                or self.eref == NULL or self.e1 == NULL or self.bener == NULL or self.wwin == NULL
                or self.ub == NULL):
            raise MemoryError()
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self.xbuf)
        PyMem_Free(self.h)
        PyMem_Free(self.renv)
        PyMem_Free(self.corr)
        PyMem_Free(self.eref)
        PyMem_Free(self.e1)
        PyMem_Free(self.bener)
        PyMem_Free(self.wwin)
        PyMem_Free(self.ub)
        PyMem_Free(self.yest)

    def reset(self):
        """Forget everything learned (a new call)."""
        cdef int k
        _ec_memset(self.xbuf, 0, self.xcap * sizeof(float))
        self.xoff = 0
        _ec_memset(self.h, 0, self.taps * sizeof(float))
        _ec_memset(self.renv, 0, (self.nlag + _EC_BPF) * sizeof(float))
        _ec_memset(self.corr, 0, self.nlag * sizeof(double))
        _ec_memset(self.eref, 0, self.nref * sizeof(float))
        _ec_memset(self.bener, 0, (self.nlag + _EC_BPF) * sizeof(float))
        _ec_memset(self.wwin, 0, (self.nlag + 1) * sizeof(float))
        for k in range(self.nlag):
            self.ub[k] = 1.0  # no evidence yet: the worst echo path the spec allows (0 dB ERL)
        self.last_pub = 0.0
        self.hzero = 1
        self.xzero = self.xlen
        self.ref_i = 0
        self.delay = 0
        self.locked = 0
        self.conf = 0.0
        self.rmean = 0.0
        self.mmean = 0.0
        self.pm = 0.0
        self.pr = 0.0
        # Before anything is learned, assume the worst echo path the spec allows (0 dB echo return loss).
        self.g_max = 1.0
        self.g_al = 1.0
        self.n_al = 0
        self.noise = 0.0
        self.bg = 0.0
        self.frames = 0
        self.ref_frames = 0
        self.dt_frames = 0
        self.since_dt = 100
        self.last_flags = 0
        self.s_ed = 0.0
        self.s_ee = 0.0
        self.last_ed = self.last_ee = self.last_ey = self.last_ex = 0.0

    @property
    def delay_ms(self):
        """The bulk echo delay in use (ms; the adaptive taps cover ``taps`` samples from there)."""
        return self.delay / 8.0

    @property
    def erle_db(self):
        """Echo return loss enhancement measured on recent echo-only frames (dB; 0 before any)."""
        if self.s_ee <= 0.0 or self.s_ed <= 0.0:
            return 0.0
        return 10.0 * log10(self.s_ed / self.s_ee)

    def bounds_copy(self):
        """The per-lag echo-gain bounds (2 ms lag steps; a new list; for tests and plots)."""
        return [self.ub[k] for k in range(self.nlag)]

    def history_copy(self):
        """The reference history, oldest sample first, the current frame last (a new list; for tests)."""
        return [self.xbuf[self.xoff + j] for j in range(self.xlen)]

    def taps_copy(self):
        """The adaptive filter's taps in delay order (a new list; for tests and plots)."""
        return [self.h[self.taps - 1 - k] for k in range(self.taps)]

    def skip(self, ref):
        """A frame the caller's side lost: keep the reference timeline continuous (``ref`` is what played
        meanwhile, 320 bytes), without adapting or deciding anything."""
        cdef Py_buffer rv
        _ec_buf(ref, &rv, _EC_SIMPLE, "ref")
        try:
            if rv.len != 2 * _EC_FRAME:
                raise ValueError(f"ref must be 320 bytes (160 int16 samples); got {rv.len}")
            self._skip(<const int16_t *>rv.buf)
        finally:
            _ec_release(&rv)

    cdef inline void _track_zeros(self, const int16_t *r) noexcept nogil:
        # trailing zero samples of the reference history after appending frame r
        cdef int i = _EC_FRAME
        while i > 0 and r[i - 1] == 0:
            i -= 1
        if i == 0:
            self.xzero = self.xzero + _EC_FRAME if self.xzero + _EC_FRAME < self.xlen else self.xlen
        else:
            self.xzero = _EC_FRAME - i

    cdef inline float *_shift_history(self) noexcept nogil:
        # drop the oldest frame of the reference history, make room for a new one at the end; returns the
        # history (x[0 : xlen], the new frame goes to x[xlen - 160 : xlen])
        cdef int n = _EC_FRAME
        if self.xoff + n + self.xlen <= self.xcap:
            self.xoff += n
        else:
            _ec_memmove(self.xbuf, self.xbuf + self.xoff + n, (self.xlen - n) * sizeof(float))
            self.xoff = 0
        return self.xbuf + self.xoff

    cdef void _skip(self, const int16_t *r) noexcept nogil:
        cdef int i, j, n = _EC_FRAME, NR = self.nlag + _EC_BPF
        cdef float v, xe = 0.0
        cdef float *x = self._shift_history()
        self._track_zeros(r)
        for i in range(n):
            v = r[i]
            x[self.xlen - n + i] = v
            xe += v * v
        self.eref[self.ref_i] = xe
        self.ref_i = (self.ref_i + 1) % self.nref
        # no envelope for the lost mic frame: the reference envelope still advances, mic side is neutral
        _ec_memmove(self.renv, self.renv + _EC_BPF, (NR - _EC_BPF) * sizeof(float))
        _ec_memmove(self.bener, self.bener + _EC_BPF, (NR - _EC_BPF) * sizeof(float))
        for i in range(_EC_BPF):
            self.renv[NR - _EC_BPF + i] = 0.0
            xe = 0.0
            for j in range(i * _EC_BLOCK, (i + 1) * _EC_BLOCK):
                xe += r[j] * <float>r[j]
            self.bener[NR - _EC_BPF + i] = xe

    def process(self, mic, ref, out):
        """Cancel one frame; returns the ``EC_*`` flag bits."""
        cdef Py_buffer mv, rv, ov
        cdef int flags
        _ec_buf(mic, &mv, _EC_SIMPLE, "mic")
        try:
            _ec_buf(ref, &rv, _EC_SIMPLE, "ref")
            try:
                _ec_buf(out, &ov, _EC_SIMPLE | _EC_WRITABLE, "out")
                try:
                    if mv.len != 2 * _EC_FRAME or rv.len != 2 * _EC_FRAME or ov.len != 2 * _EC_FRAME:
                        raise ValueError(f"mic, ref and out must be 320 bytes (160 int16 samples); got "
                                         f"{mv.len}, {rv.len}, {ov.len}")
                    with nogil:
                        flags = self._frame(<const int16_t *>mv.buf, <const int16_t *>rv.buf,
                                            <int16_t *>ov.buf)
                finally:
                    _ec_release(&ov)
            finally:
                _ec_release(&rv)
        finally:
            _ec_release(&mv)
        return flags

    cdef int _frame(self, const int16_t *d, const int16_t *r, int16_t *o) noexcept nogil:
        cdef int L = self.taps, n = _EC_FRAME, i, j, b, lag, best, new_delay, shift, base0, nb
        cdef float *x
        cdef float *h = self.h
        cdef float *e1 = self.e1
        cdef float acc, v, m, xs, g, norm, reg = L * 900.0, blk_r, blk_m, blk_e
        cdef double ed = 0.0, ee = 0.0, ey = 0.0, ex = 0.0, xe = 0.0, xmax, s, p, rr, pred, scale, bgn
        cdef int nearend, ref_active, above, flags = 0, converged, k, k0, k1, mic_zero
        cdef double w, pub, um, lo
        cdef float *wwin = self.wwin
        cdef float *ub = self.ub
        cdef int NR = self.nlag + _EC_BPF
        cdef int fast = self.fast
        cdef float *yest = self.yest

        # 1. shift the reference history by one frame and append the new reference frame
        x = self._shift_history()
        self._track_zeros(r)
        for i in range(n):
            v = r[i]
            x[self.xlen - n + i] = v
            xe += v * v
        self.eref[self.ref_i] = <float>xe
        self.ref_i = (self.ref_i + 1) % self.nref
        xmax = 0.0
        for i in range(self.nref):
            if self.eref[i] > xmax:
                xmax = self.eref[i]
        # rms 30 (about -60 dBFS) over a frame: anything quieter cannot echo audibly
        ref_active = xmax > n * 900.0
        if ref_active:
            self.ref_frames += 1

        # 2. bulk delay: cross-correlate 2 ms envelopes of mic and reference over 0..max_delay
        _ec_memmove(self.renv, self.renv + _EC_BPF, (NR - _EC_BPF) * sizeof(float))
        _ec_memmove(self.bener, self.bener + _EC_BPF, (NR - _EC_BPF) * sizeof(float))
        for b in range(_EC_BPF):
            blk_r = 0.0
            blk_m = 0.0
            blk_e = 0.0
            for i in range(b * _EC_BLOCK, (b + 1) * _EC_BLOCK):
                blk_r += fabsf(x[self.xlen - n + i])
                blk_e += x[self.xlen - n + i] * x[self.xlen - n + i]
                blk_m += fabsf(<float>d[i])
            self.bener[NR - _EC_BPF + b] = blk_e
            blk_r = sqrtf(blk_r / _EC_BLOCK)
            blk_m = sqrtf(blk_m / _EC_BLOCK)
            self.rmean += 0.02 * (blk_r - self.rmean)
            self.mmean += 0.02 * (blk_m - self.mmean)
            self.renv[NR - _EC_BPF + b] = blk_r - self.rmean
            e1[b] = blk_m - self.mmean  # scratch: mean-removed mic envelope
        if ref_active and self.since_dt > 2:
            if fast:
                rtv_ec_xcorr(e1, self.renv, _EC_BPF, self.nlag, self.lam, self.corr)
            else:
                for lag in range(self.nlag):
                    s = 0.0
                    base0 = NR - _EC_BPF - lag
                    for b in range(_EC_BPF):
                        s += e1[b] * self.renv[base0 + b]
                    self.corr[lag] = self.lam * self.corr[lag] + s
            s = 0.0
            p = 0.0
            for b in range(_EC_BPF):
                s += e1[b] * e1[b]
                p += self.renv[NR - _EC_BPF + b] * self.renv[NR - _EC_BPF + b]
            self.pm = self.lam * self.pm + s
            self.pr = self.lam * self.pr + p
            best = 0
            for lag in range(1, self.nlag):
                if self.corr[lag] > self.corr[best]:
                    best = lag
            self.conf = self.corr[best] / sqrt(self.pm * self.pr + 1e-9)
            if self.conf > 0.3:
                new_delay = best * _EC_BLOCK - self.pre
                if new_delay < 0:
                    new_delay = 0
                if new_delay > self.max_delay:
                    new_delay = self.max_delay
                shift = new_delay - self.delay
                if (self.locked and abs(shift) > 4 and self.s_ee > 0.0 and self.s_ed > 3.0 * self.s_ee
                        and abs(shift) < L):
                    # A converged filter (ERLE > 5 dB) moves its window only if the taps it would drop hold
                    # little of the echo path: the envelope correlation wobbles by a block (2 ms) now and then,
                    # most often when the reference jitters at the I/O edge, and moving the window then cut the
                    # direct path out of the filter (a residual jump the detector took for the caller). An echo
                    # that really moved within the window is followed by the adaptation itself.
                    p = 0.0
                    s = 0.0
                    for j in range(L):
                        s += h[j] * h[j]
                        if (shift > 0 and j >= L - shift) or (shift < 0 and j < -shift):
                            p += h[j] * h[j]
                    if p > 0.1 * s:
                        shift = 0
                if not self.locked or abs(shift) > 4:
                    # keep what the taps learned: tap k (total delay delay+k) moves to k + delay - new_delay
                    if shift > 0:   # taps move towards shorter index
                        for j in range(L - 1, -1, -1):
                            h[j] = h[j - shift] if j - shift >= 0 else 0.0
                    elif shift < 0:
                        for j in range(L):
                            h[j] = h[j - shift] if j - shift < L else 0.0
                    if not self.locked:
                        self.n_al = 0
                    self.delay = new_delay
                    self.locked = 1

        # 3. pass 1: echo estimate with the current taps, residual, energies
        base0 = self.xlen - n - self.delay - L + 1
        xs = rtv_ec_dot(x + base0, x + base0, L)
        mic_zero = 1
        for i in range(n):
            if d[i] != 0:
                mic_zero = 0
                break
        if fast:
            if self.hzero or self.xzero >= n + self.delay + L - 1 or mic_zero:
                # zero taps, or a reference window of zeros: every echo estimate is exactly 0. A silent mic
                # (digital silence): the residual is the mic itself whatever the estimate (a non-zero estimate
                # makes ee > ed and passes the mic through below), and with ed == 0 no decision reads the
                # estimate's energy ey (so last_ey reads 0 on such frames instead of the estimate's energy)
                for i in range(n):
                    yest[i] = 0.0
            else:
                rtv_ec_filter(h, x + base0, L, n, yest)
        for i in range(n):
            if fast:
                acc = yest[i]
            else:
                acc = rtv_ec_dot(h, x + base0 + i, L)
            v = d[i]
            e1[i] = v - acc
            ed += v * v
            ee += e1[i] * e1[i]
            ey += acc * acc
            ex += xs
            # slide the window energy by one sample (never read past the newest sample)
            if i + 1 < n:
                xs = xs + x[base0 + i + L] * x[base0 + i + L] - x[base0 + i] * x[base0 + i]
                if xs < 0.0:
                    xs = 0.0
        ex /= L
        if ee > ed:
            # the filter makes things worse (it has not converged yet, or the path changed): pass the mic
            # signal through rather than add a wrong echo estimate to it
            for i in range(n):
                e1[i] = d[i]
            ee = ed
        self.last_ed = ed
        self.last_ee = ee
        self.last_ey = ey
        self.last_ex = ex

        # 4. double-talk decision: is the residual louder than the echo could be?
        if ee < self.noise or self.frames == 0:
            self.noise += 0.3 * (ee - self.noise)
        else:
            self.noise *= 1.01
        if self.noise < n * 25.0:
            self.noise = n * 25.0
        pred = 0.0
        # the line's background (noise, babble) the canceller cannot remove: its mean, capped at bg_cap_ratio
        # (~8 dB) above the noise floor (a mean far above the minimum is residual echo of a filter still
        # converging, which the residual test below already accounts for; counting it twice deafened the
        # detector to callers barging in early in a bot turn)
        bgn = self.bg_cap_ratio * self.noise
        if bgn > self.bg:
            bgn = self.bg
        # louder than the background by bg_ratio: babble seldom is, a caller barging in is (reported apart from
        # the near-end decision, which is 1 whenever no echo is possible)
        above = self.bg <= 0.0 or ee > self.bg_ratio * bgn
        # reference energy of the 20 ms window at each lag (2 ms steps), for the per-lag echo-gain bound
        # (read only while bot audio can echo: the fast path leaves it stale otherwise)
        if ref_active or not fast:
            w = 0.0
            for b in range(NR - _EC_BPF, NR):
                w += self.bener[b]
            for lag in range(self.nlag):
                wwin[lag] = <float>(w if w > 0.0 else 0.0)
                w += self.bener[NR - _EC_BPF - lag - 1] - self.bener[NR - lag - 1]
        converged = (self.locked and self.n_al >= 25 and self.s_ee > 0.0 and self.s_ed > 3.0 * self.s_ee)
        pub = 0.0
        if not ref_active:
            nearend = 1
        else:
            if self.locked and self.n_al >= 15:
                pred = self.g_al * ex
            else:
                pred = self.g_max * xmax
            # (plus an absolute floor, rms 50 = -56 dBFS: a frame that quiet is never the caller barging in)
            nearend = ee > self.dt_ratio * pred + 3.0 * self.noise + n * 2500.0
            # Not "no echo" vs "not converged yet": until the filter has converged, the residual test assumes
            # the pessimistic gain g_max, learned from whatever the microphone held (a caller talking over the
            # start of a bot turn on a line with no echo at all taught it 0 dB and was muted until the bot
            # stopped). Each echo delay (lag) is also a hypothesis the microphone can refute: a quiet microphone
            # while the reference at that lag was loud bounds the echo gain at that lag (ub). The most
            # pessimistic echo any lag still allows (the bound times the reference window's energy, spread
            # +-ub_spread blocks for a reference timeline that jitters) is an upper bound of the echo in this
            # frame; a microphone ub_ratio (6 dB, the residual test's own margin) above it is the caller.
            if not nearend and not converged and ed > 3.0 * self.noise + n * 2500.0:
                for lag in range(self.nlag):
                    if wwin[lag] <= 0.0:
                        continue
                    k0 = lag - self.ub_spread
                    k1 = lag + self.ub_spread + 1
                    if k0 < 0:
                        k0 = 0
                    if k1 > self.nlag:
                        k1 = self.nlag
                    um = 0.0
                    for k in range(k0, k1):
                        if ub[k] > um:
                            um = ub[k]
                    if um * wwin[lag] > pub:
                        pub = um * wwin[lag]
                nearend = ed > self.ub_ratio * pub + 3.0 * self.noise + n * 2500.0
            # A converged filter predicts the echo of this very frame (ey): the microphone holding clearly more
            # than that echo plus the noise is the caller too, even when the residual test above is blunted by
            # a noisy line (normalised cross-correlation detector, in energy form)
            if not nearend and converged and ey > n * 90000.0:
                nearend = ed > self.ncc_ratio * (ey + 1.5 * self.noise)
            # ... unless the converged filter explains the microphone: a loud stretch of bot speech, or an echo
            # that slipped by a few ms (a playout underrun), leaves a residual above the learned ratio, but the
            # mic then holds little more than the echo estimate
            if nearend and converged and ed < self.veto_ratio * (ey + self.bg):
                nearend = 0
            # ... and louder than the recent background (echo residue + noise, babble included) by the same
            # margin: a burst of background voices is not the caller
            if not above:
                nearend = 0
            rr = ee - self.noise
            if rr < 0.0:
                rr = 0.0
            if not nearend:
                # peak-following gains: quick to rise (a louder echo must not look like the caller), slow to
                # fall (the residual of one quiet frame says little about the next)
                # (slower still until the reference has played for longer than the longest echo delay: before
                # that, a quiet microphone may only mean that the echo has not arrived yet)
                fall = 0.15 if self.ref_frames > self.nref else 0.05
                # (a gain is only learned from frames where the reference is loud, rms >= 300: with a quiet
                # reference the ratio measures the noise, not the echo path)
                # (a rise is capped at 1 + rise_cap - rise per frame, x1.15 = 0.6 dB by default, 30 dB/s: a caller
                # frame the detector missed, over a quiet reference, would otherwise multiply the gain tenfold in
                # one frame and deafen the detector to the rest of the barge-in)
                if xmax > n * 90000.0:
                    p = rr / xmax
                    if p > self.rise_cap * self.g_max / self.rise:
                        p = self.rise_cap * self.g_max / self.rise
                    self.g_max += (self.rise if p > self.g_max else fall) * (p - self.g_max)
                if self.locked and ex > n * 90000.0:
                    p = rr / ex
                    if p > self.rise_cap * self.g_al / self.rise:
                        p = self.rise_cap * self.g_al / self.rise
                    self.g_al += (self.rise if p > self.g_al else fall) * (p - self.g_al)
                    self.n_al += 1
                self.s_ed = 0.95 * self.s_ed + ed
                self.s_ee = 0.95 * self.s_ee + ee
            else:
                # a slow leak upwards so that a sudden echo path change cannot lock the detector forever
                # (+0.3 % per frame, about +1.3 dB/s, however loud the caller is)
                if rr > self.g_max * xmax:
                    self.g_max *= 1.003
                if self.locked and rr > self.g_al * ex:
                    self.g_al *= 1.003
                self.dt_frames += 1
            if self.g_max < 0.003:
                self.g_max = 0.003
            if self.g_al < 0.003:
                self.g_al = 0.003
            if self.g_max > 4.0:
                self.g_max = 4.0
            if self.g_al > 4.0:
                self.g_al = 4.0
            # the per-lag bounds: fall on a microphone quieter than the bound predicts (what refutes that lag),
            # rise (ub_rise per frame at most, a slowly changing path) only on frames that are not the caller
            for lag in range(self.nlag):
                lo = wwin[lag] if lag + 1 == self.nlag or wwin[lag] < wwin[lag + 1] else wwin[lag + 1]
                if lo > n * 90000.0:
                    p = ed / lo
                    if p < ub[lag]:
                        ub[lag] += <float>(self.ub_fall * (p - ub[lag]))
                    elif not nearend:
                        um = ub[lag] * self.ub_rise
                        ub[lag] = <float>(p if p < um else um)
                        if ub[lag] > 4.0:
                            ub[lag] = 4.0
        self.last_pub = pub
        # background level: mean residual energy of the frames that are not the caller (time constant ~1 s),
        # learned before the bot speaks too. Frames far above it (an unconverged echo, a caller the detector
        # missed) move it only slowly, and never while no echo is possible (that is the caller's own turn).
        if self.bg <= 0.0:
            # the first frame seen: a start far closer to the background than zero (from zero, the rule
            # below let it grow only slowly, and babble in the first seconds of a bot turn passed for the
            # caller)
            self.bg = ee
        if self.bg <= 0.0 or ee < 2.0 * self.bg:
            if not nearend or not ref_active:
                self.bg += 0.05 * (ee - self.bg)
        elif ref_active and not nearend:
            self.bg += 0.005 * (ee - self.bg)
        if ref_active and nearend:
            self.since_dt = 0
        else:
            self.since_dt += 1

        # 5. pass 2: NLMS adaptation, frozen during (and just after) double talk
        # (only when the aligned reference is loud enough to teach anything: fitting noise to a near-silent
        # reference is how an NLMS drifts; the regularisation also scales with the residual noise level)
        # (and, unless adapt_on_silence, not on a digitally silent mic: an all-zero frame says the caller's leg
        # is muted or suppressed, not that the echo path is gone; adapting on it unlearned the path)
        if mic_zero and not self.adapt_on_silence:
            pass
        elif ref_active and self.since_dt > 2 and ex > n * 900.0 and not (fast and self.hzero and ed == 0.0):
            # (the fast path skips zero taps on a silent mic: every step is g = 0, the taps stay exactly zero)
            self.hzero = 0
            reg = <float>(L * (900.0 + 4.0 * self.noise / n))
            norm = 0.0
            for j in range(L):
                norm = norm + x[base0 + j] * x[base0 + j]
            if fast:
                rtv_ec_nlms(h, x + base0, d, L, n, self.mu, reg, norm)
            else:  # the per-sample reference loop (``fast = False``: the tests' bit-exact oracle)
                for i in range(n):
                    acc = rtv_ec_dot(h, x + base0 + i, L)
                    g = self.mu * (<float>d[i] - acc) / (norm + reg)
                    rtv_ec_axpy(g, x + base0 + i, h, L)
                    # slide the window energy by one sample
                    if i + 1 < n:
                        norm = norm + x[base0 + i + L] * x[base0 + i + L] - x[base0 + i] * x[base0 + i]
                        if norm < 0.0:
                            norm = 0.0

        # 6. output: the residual when the caller talks; echo-only frames are brought down to the noise level
        # (and, if pass_hang > 0, for that many frames after double talk: the detector flickers on a caller over
        # loud echo or babble, and suppressing the frame between two caller frames breaks the VAD's onset run.
        # Off by default: through the real server, an echo slipping by a few ms at the I/O edge gave two
        # double-talk frames, and the passed third one completed a VAD onset, a false barge-in in about 1 run
        # of 13 of tests/test_echo_e2e.py; the simulation's matrix never shows that. pass_ratio limits it to
        # frames where the microphone holds more than the filter's echo estimate, which excludes that slip;
        # on the matrix, pass_hang 1 brings reaction p95 from 260 to 200 ms but lets one babble burst through)
        if (nearend or ee <= self.noise or ee <= 0.0
                or (self.since_dt <= self.pass_hang and ed > self.pass_ratio * ey)):
            scale = 1.0
        else:
            scale = sqrt(self.noise / ee)
        for i in range(n):
            v = e1[i] * <float>scale
            if v > 32767.0:
                v = 32767.0
            elif v < -32768.0:
                v = -32768.0
            o[i] = <int16_t>v
        self.frames += 1
        if nearend:
            flags |= _EC_F_NEAR
        if ref_active:
            flags |= _EC_F_REF
        if self.locked:
            flags |= _EC_F_LOCK
        if above:
            flags |= _EC_F_ABOVE
        self.last_flags = flags
        return flags


cdef enum:
    _RR_BYTES = 1 << 17   # outbound ring: 16.4 s of μ-law, far more than Twilio ever queues
    _RR_MASK = _RR_BYTES - 1
    _EG_UNPRIMED = 8      # EchoGateCore.frame(): no bot audio sent yet, the frame was not processed
    _EC_FRAME_MS = 20
    _EG_MAX_SKIP = 25     # lost frames replayed into the canceller at most (longer: the stream stalled)

EG_UNPRIMED = _EG_UNPRIMED  # EchoGateCore.frame / frame_at result when no bot audio was sent yet
EG_MAX_SKIP = _EG_MAX_SKIP  # lost frames replayed into the canceller at most


cdef class ReferenceRing:
    """What was played when (the compiled half of :class:`rtvoice.echo.ReferenceTap`): bot μ-law keyed by the
    ledger's stream position. ``sent(payload)`` appends (the pacer's hook: send order, so the write position
    equals ``ledger.sent_pos``); ``played(pos, epoch, out)`` decodes the 20 ms that played up to position
    ``pos`` into ``out`` (320 bytes). The read cursor advances one frame per call while audio plays instead of
    following every re-anchoring of the ledger's estimate; it resyncs after a clear (``epoch`` changed) or a
    drift beyond 60 ms."""

    cdef uint8_t *ring
    cdef readonly long long written, cursor
    cdef readonly long long epoch
    cdef int16_t pcm[_EC_FRAME]

    def __cinit__(self):
        self.ring = <uint8_t *>PyMem_Malloc(_RR_BYTES)
        if self.ring == NULL:
            raise MemoryError()
        self.written = 0
        self.cursor = 0
        self.epoch = 0

    def __dealloc__(self):
        PyMem_Free(self.ring)

    def sent(self, payload):
        """Bot audio just sent to Twilio."""
        cdef Py_buffer v
        cdef Py_ssize_t n, at, first
        cdef const uint8_t *src
        _ec_getbuf(payload, &v, _EC_SIMPLE)
        try:
            src = <const uint8_t *>v.buf
            n = v.len
            if n > _RR_BYTES:  # only the newest ring's worth can ever be read back
                src += n - _RR_BYTES
                self.written += n - _RR_BYTES
                n = _RR_BYTES
            at = self.written & _RR_MASK
            first = n if n < _RR_BYTES - at else _RR_BYTES - at
            memcpy(self.ring + at, src, first)
            if first < n:
                memcpy(self.ring, src + first, n - first)
            self.written += n
        finally:
            _ec_release(&v)

    cdef const int16_t *_played(self, long long pos, long long epoch) noexcept nogil:
        cdef long long cursor = self.cursor, drift, n, i
        cdef uint8_t code
        if epoch != self.epoch:  # a clear: what was queued was discarded, never played
            self.epoch = epoch
            if pos - _EC_FRAME > cursor:
                cursor = pos - _EC_FRAME
        drift = pos - (cursor + _EC_FRAME)
        if drift > 3 * _EC_FRAME or drift < -3 * _EC_FRAME:
            cursor = pos - _EC_FRAME if pos > _EC_FRAME else 0
        # Whole frames of what was written, as long as the cursor is not past ``pos``: the reference stays one
        # continuous signal, running at most a frame ahead of the ledger's estimate (a constant lead the bulk
        # delay estimate absorbs). Capping at ``pos - cursor`` with silence in front, as the first Python tap
        # did, inserts gaps into the reference whenever ``pos`` jitters off the 20 ms grid (marks, real
        # sockets): the echo e2e test then failed 1 run in 2 with false barge-ins, so it stays this way.
        if cursor >= pos:
            n = 0  # nothing (more) has played
        else:
            n = self.written - cursor
            if n > _EC_FRAME:
                n = _EC_FRAME
            if n < 0:
                n = 0
        for i in range(n):
            self.pcm[i] = rtv_ulaw_dec[self.ring[(cursor + i) & _RR_MASK]]
        for i in range(n, _EC_FRAME):
            self.pcm[i] = 0  # μ-law silence (0xff) decodes to 0
        self.cursor = cursor + n
        return self.pcm

    def played(self, long long pos, long long epoch, out):
        """Decode into ``out`` (320 bytes) the bot audio played in the frame ending at stream position ``pos``
        (``epoch``: the ledger's clear count)."""
        cdef Py_buffer ov
        _ec_buf(out, &ov, _EC_SIMPLE | _EC_WRITABLE, "out")
        try:
            if ov.len != 2 * _EC_FRAME:
                raise ValueError(f"out must be 320 bytes (160 int16 samples); got {ov.len}")
            memcpy(ov.buf, self._played(pos, epoch), 2 * _EC_FRAME)
        finally:
            _ec_release(&ov)


cdef class EchoGateCore:
    """The per-frame work of :class:`rtvoice.echo.EchoAwareGate` in one call: reference from the ring, echo
    cancellation, and the near-end/echo-only history bits the gate's ``allow`` reads."""

    cdef readonly ReferenceRing ring
    cdef readonly EchoCancellerCore ec
    cdef readonly object out          # bytearray(320): the echo-reduced frame
    cdef Py_buffer outv
    cdef int has_out
    #: near-end flags of the last 8 frames and echo-only flags (audible echo, no caller), newest in bit 0
    cdef readonly int recent, echo_only, primed
    #: process the frames before any bot audio (zero reference) so the detector knows the line's background
    #: when the bot starts. Off: a caller still talking when the bot starts is then heard as double talk, the
    #: residual suppression ends the VAD's utterance and the next frames start a new one, a barge-in on an
    #: utterance that began before the bot (tests/test_call_e2e_echo.py). On, the quality matrix improves
    #: (babble at the bot's start), so it stays a switch.
    cdef public int learn_unprimed
    cdef int16_t zero[_EC_FRAME]
    cdef readonly long long frames, double_talk_frames, last_now

    def __cinit__(self, ReferenceRing ring, EchoCancellerCore ec):
        self.ring = ring
        self.ec = ec
        self.out = bytearray(2 * _EC_FRAME)
        _ec_getbuf(self.out, &self.outv, _EC_SIMPLE | _EC_WRITABLE)
        self.has_out = 1
        self.recent = 0
        self.echo_only = 0
        self.primed = 0
        self.learn_unprimed = 0
        memset(self.zero, 0, sizeof(self.zero))
        self.frames = 0
        self.double_talk_frames = 0
        self.last_now = 0

    def __dealloc__(self):
        if self.has_out:
            _ec_release(&self.outv)

    def skip(self, long long pos, long long epoch):
        """An inbound frame was lost: advance the canceller's reference by what played up to ``pos``."""
        cdef const int16_t *r = self.ring._played(pos, epoch)
        self.ec._skip(r)

    def frame_at(self, mic, object ledger, long long now):
        """:meth:`frame` with the ledger's position and epoch fetched here, lost frames included: the whole
        per-frame work of :meth:`rtvoice.echo.EchoAwareGate.frame` in one call (issue 7: no Python-level
        attribute traffic per frame). ``ledger`` is the call's :class:`rtvoice.call.ledger.PlaybackLedger`.
        When frames were lost since the previous call (a stream-time gap of more than 20 ms), the canceller's
        reference still advances by what played meanwhile (at most ``_EG_MAX_SKIP`` frames), or the echo delay
        would slip by 20 ms per loss."""
        cdef long long gap = now - self.last_now, i, k
        if not self.primed:
            if self.ring.written == 0:
                return self._frame(mic, 0, 0, now)  # nothing played yet: the position is not needed
        elif gap > _EC_FRAME_MS:
            k = gap // _EC_FRAME_MS - 1
            if k > _EG_MAX_SKIP:
                k = _EG_MAX_SKIP
            played_pos = ledger.played_pos
            for i in range(k, 0, -1):
                self.ec._skip(self.ring._played(played_pos(now - i * _EC_FRAME_MS), ledger.epoch))
        return self._frame(mic, ledger.played_pos(now), ledger.epoch, now)

    def frame(self, mic, long long pos, long long epoch, long long now):
        """One inbound frame (``mic``: 320 bytes) ending at stream time ``now``, the ledger's played position
        ``pos`` and clear count ``epoch``. Returns the canceller's flag bits, or ``_EG_UNPRIMED`` (8) when no bot
        audio was ever sent (the frame is then not processed: no echo is possible)."""
        return self._frame(mic, pos, epoch, now)

    cdef int _frame(self, object mic, long long pos, long long epoch, long long now) except -1:
        cdef Py_buffer mv
        cdef int flags, near, echo
        self.last_now = now
        if not self.primed:
            if self.ring.written == 0:
                self.recent = ((self.recent << 1) | 1) & 0xFF
                if self.learn_unprimed:
                    # no echo possible yet, but the detector learns the line's background meanwhile
                    _ec_buf(mic, &mv, _EC_SIMPLE, "mic")
                    try:
                        if mv.len != 2 * _EC_FRAME:
                            raise ValueError(f"mic must be 320 bytes (160 int16 samples); got {mv.len}")
                        with nogil:
                            self.ec._frame(<const int16_t *>mv.buf, self.zero, <int16_t *>self.outv.buf)
                    finally:
                        _ec_release(&mv)
                return _EG_UNPRIMED
            self.primed = 1
        _ec_buf(mic, &mv, _EC_SIMPLE, "mic")
        try:
            if mv.len != 2 * _EC_FRAME:
                raise ValueError(f"mic must be 320 bytes (160 int16 samples); got {mv.len}")
            with nogil:
                flags = self.ec._frame(<const int16_t *>mv.buf, self.ring._played(pos, epoch),
                                       <int16_t *>self.outv.buf)
        finally:
            _ec_release(&mv)
        near = flags & _EC_F_NEAR
        # for the barge-in decision a frame with no echo possible (a pause in the bot's answer longer than the
        # echo delay, its first frames) must still rise above the background: babble is not the caller
        self.recent = ((self.recent << 1) | (1 if near and (flags & _EC_F_REF or flags & _EC_F_ABOVE) else 0)) & 0xFF
        # echo-only: bot audio could echo, the mic is not quiet, and the detector says it is all echo
        echo = 1 if (flags & _EC_F_REF and not near and self.ec.last_ed > _EC_FRAME * 2500.0) else 0
        self.echo_only = ((self.echo_only << 1) | echo) & 0xFF
        self.frames += 1
        if near and flags & _EC_F_REF:
            self.double_talk_frames += 1
        return flags


# ======================================================================================================
# ---- per-frame level for the VAD's level gate (rtvoice.vad; performance engineer) ----
# One call per frame instead of numpy's frombuffer + abs + sum (three temporaries, ~3 µs).
# ======================================================================================================

def frame_abs_sum(pcm, Py_ssize_t n_samples):
    """Sum of ``|sample|`` over the first ``n_samples`` int16 samples of ``pcm`` (any C-contiguous buffer
    holding at least ``2 * n_samples`` bytes). Exact: an int64 accumulator (|-32768| counts as 32768)."""
    cdef Py_buffer v
    cdef const int16_t *s
    cdef long long acc = 0
    cdef int x
    cdef Py_ssize_t i
    if n_samples < 0:
        raise ValueError("n_samples must be >= 0")
    _get_in(pcm, &v, "pcm")
    try:
        if v.len < 2 * n_samples:
            raise ValueError(f"pcm has {v.len} bytes; {n_samples} int16 samples need {2 * n_samples}")
        s = <const int16_t *>v.buf
        for i in range(n_samples):
            x = s[i]
            acc += x if x >= 0 else -x
    finally:
        PyBuffer_Release(&v)
    return acc
