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
    """
    int16_t rtv_ulaw_dec[256]
    int16_t rtv_alaw_dec[256]
    uint8_t rtv_ulaw_enc[16384]
    uint8_t rtv_alaw_enc[8192]
    void rtv_g711_init()
    void rtv_g711_decode(const int16_t *table, const uint8_t *src, uint8_t *dst, Py_ssize_t n)
    void rtv_g711_encode(const uint8_t *table, int shift, const uint8_t *src, uint8_t *dst, Py_ssize_t n)

rtv_g711_init()

CORE_VERSION = 1


cdef inline int _get_in(object obj, Py_buffer *view, str what) except -1:
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except (BufferError, TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected a C-contiguous buffer (bytes, bytearray, memoryview, numpy array), "
                         f"got {type(obj).__name__}: {exc}") from None
    return 0


cdef inline int _get_out(object obj, Py_buffer *view) except -1:
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE | PyBUF_WRITABLE)
    except (BufferError, TypeError, ValueError) as exc:
        raise ValueError(f"out: expected a writable C-contiguous buffer (bytearray, memoryview, numpy array), "
                         f"got {type(obj).__name__}: {exc}") from None
    return 0


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
            with nogil:
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
            with nogil:
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
