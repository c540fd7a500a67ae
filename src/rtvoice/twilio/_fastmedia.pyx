# cython: language_level=3
"""Compiled per-frame kernel for Twilio's ``media`` message (see :mod:`rtvoice.twilio.fastmedia`).

:class:`MediaKernel` takes the raw UTF-8 bytes of one WebSocket text payload and, in one C call with no
Python object built and nothing allocated, recognises exactly the plain ``media`` layouts
:func:`rtvoice.twilio.fastmedia.parse_media_fast` accepts (both key orders, same value rules), base64-decodes
the payload into the kernel's own preallocated buffer and, for a 20 ms frame (160 codes), μ-law-decodes it
into the call's int16 PCM buffer. Anything else returns -1 ("fallback": the caller decodes the text strictly
and runs the Python parsers, which accept it or say what is wrong).

The accepted bytes are a subset of ASCII, so an accepted payload is valid UTF-8 and decodes to the text the
Python fast path would have parsed to the same fields (property-tested in ``tests/test_fastpath_media_kernel.py``).
Extra limits that only make the kernel fall back more often: a decoded payload over the buffer's capacity, a
stream SID over 64 or a track over 32 characters, and '=' padding after a whole base64 quad (which
CPython's strict mode accepts in 3.11 but refuses from 3.13: left to the Python path).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.stdint cimport int16_t, int64_t, uint8_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* One byte table: base64 value 0-63, RTVFM_PAD for '=', RTVFM_BAD for anything else; and a class bit set
       for the SID/track (ASCII letters and digits) and counter (ASCII digits) scans. */
    #define RTVFM_PAD 64
    #define RTVFM_BAD 255
    #define RTVFM_SID_MAX 64
    #define RTVFM_TRACK_MAX 32
    #define RTVFM_MAX_DIGITS 18
    static uint8_t rtvfm_b64[256];
    static uint8_t rtvfm_alnum[256];
    static int16_t rtvfm_ulaw[256];

    static void rtvfm_init(void) {
        static const char alpha[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; i < 256; i++) {
            /* the same G.711 expansion as rtvoice._dsp (rtv_ulaw2linear): bit-exact, tested */
            uint8_t u = (uint8_t)~i;
            int t = ((u & 0x0F) << 3) + 0x84;
            t <<= ((unsigned)u & 0x70) >> 4;
            rtvfm_ulaw[i] = (int16_t)((u & 0x80) ? (0x84 - t) : (t - 0x84));
            rtvfm_b64[i] = RTVFM_BAD;
            rtvfm_alnum[i] = (uint8_t)((i >= '0' && i <= '9') || (i >= 'A' && i <= 'Z') || (i >= 'a' && i <= 'z'));
        }
        for (int i = 0; i < 64; i++) rtvfm_b64[(uint8_t)alpha[i]] = (uint8_t)i;
        rtvfm_b64['='] = RTVFM_PAD;
    }

    typedef struct {
        int64_t seq, chunk, ts;
        Py_ssize_t sid_off, sid_len, track_off, track_len, pay_off, pay_len;
        Py_ssize_t n;  /* decoded payload length */
    } rtvfm_fields;

    /* The fixed parts of the two layouts (the tokens between the values). */
    static const char L_HEAD[] = "{\\"event\\":\\"media\\",\\"sequenceNumber\\":\\"";
    static const char L_TW_MEDIA[] = "\\",\\"media\\":{\\"track\\":\\"";
    static const char L_CHUNK[] = "\\",\\"chunk\\":\\"";
    static const char L_TS[] = "\\",\\"timestamp\\":\\"";
    static const char L_PAYLOAD[] = "\\",\\"payload\\":\\"";
    static const char L_TW_SID[] = "\\"},\\"streamSid\\":\\"";
    static const char L_TW_END[] = "\\"}";
    static const char L_SIM_SID[] = "\\",\\"streamSid\\":\\"";
    static const char L_SIM_MEDIA[] = "\\",\\"media\\":{\\"track\\":\\"";
    static const char L_SIM_END[] = "\\"}}";

    #define RTVFM_LIT(L) do { \\
        const Py_ssize_t ln_ = (Py_ssize_t)(sizeof(L) - 1); \\
        if (end - pos < ln_ || memcmp(p + pos, L, (size_t)ln_) != 0) return -1; \\
        pos += ln_; } while (0)

    /* 1-18 ASCII digits -> *out; the new position, or -1. */
    static inline Py_ssize_t rtvfm_digits(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end, int64_t *out) {
        Py_ssize_t start = pos;
        int64_t v = 0;
        while (pos < end && p[pos] >= '0' && p[pos] <= '9') {
            if (pos - start >= RTVFM_MAX_DIGITS) return -1;
            v = v * 10 + (p[pos] - '0');
            pos++;
        }
        if (pos == start) return -1;
        *out = v;
        return pos;
    }

    /* one or more ASCII letters/digits; the new position, or -1. */
    static inline Py_ssize_t rtvfm_alnums(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end) {
        Py_ssize_t start = pos;
        while (pos < end && rtvfm_alnum[p[pos]]) pos++;
        return pos == start ? -1 : pos;
    }

    /* base64 alphabet and '=' (the structure is checked by rtvfm_b64_len). */
    static inline Py_ssize_t rtvfm_b64chars(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end) {
        while (pos < end && rtvfm_b64[p[pos]] != RTVFM_BAD) pos++;
        return pos;
    }

    /* Decoded length of s[0:m] (alphabet and '=' only), or -1. Accepted: k data characters, then no padding
       if k % 4 == 0, "==" if k % 4 == 2, "=" if k % 4 == 3 (k % 4 == 1 never), and nothing after the
       padding: a subset of what binascii.a2b_base64(s, strict_mode=True) accepts on every CPython >= 3.11
       (3.11 also takes '=' after a whole quad, "AAAA=", which 3.13 refuses: that one falls back). Unused low
       bits of the last character are ignored, as binascii does. The empty string is b"". */
    static inline Py_ssize_t rtvfm_b64_len(const uint8_t *s, Py_ssize_t m) {
        Py_ssize_t pads = 0, k;
        while (pads < m && pads < 3 && s[m - 1 - pads] == '=') pads++;
        k = m - pads;
        for (Py_ssize_t i = 0; i < k; i++) if (s[i] == '=') return -1;  /* leading/inner/4+ trailing pads */
        switch (k & 3) {
        case 0: if (pads != 0) return -1; return k / 4 * 3;
        case 2: if (pads != 2) return -1; return k / 4 * 3 + 1;
        case 3: if (pads != 1) return -1; return k / 4 * 3 + 2;
        default: return -1;
        }
    }

    static inline void rtvfm_b64_decode(const uint8_t *s, Py_ssize_t m, uint8_t *out) {
        Py_ssize_t i = 0;
        const uint8_t *t = rtvfm_b64;
        while (i + 4 <= m && s[i + 3] != '=') {
            uint32_t v = ((uint32_t)t[s[i]] << 18) | ((uint32_t)t[s[i + 1]] << 12)
                       | ((uint32_t)t[s[i + 2]] << 6) | (uint32_t)t[s[i + 3]];
            out[0] = (uint8_t)(v >> 16); out[1] = (uint8_t)(v >> 8); out[2] = (uint8_t)v;
            out += 3; i += 4;
        }
        if (i < m) {  /* the padded last quad: "xx==" or "xxx=" */
            uint8_t a = t[s[i]], b = t[s[i + 1]];
            out[0] = (uint8_t)((a << 2) | (b >> 4));
            if (s[i + 2] != '=') out[1] = (uint8_t)((b << 4) | (t[s[i + 2]] >> 2));
        }
    }

    /* Recognise one plain media message; 0 and the fields, or -1. */
    static int rtvfm_parse(const uint8_t *p, Py_ssize_t end, rtvfm_fields *f) {
        Py_ssize_t pos = 0, q;
        int twilio;
        f->sid_off = f->sid_len = 0;
        RTVFM_LIT(L_HEAD);
        if ((pos = rtvfm_digits(p, pos, end, &f->seq)) < 0) return -1;
        /* Twilio's order: media object, then streamSid; the simulator's: streamSid, then media */
        twilio = (end - pos >= (Py_ssize_t)(sizeof(L_TW_MEDIA) - 1)
                  && memcmp(p + pos, L_TW_MEDIA, sizeof(L_TW_MEDIA) - 1) == 0);
        if (twilio) {
            pos += (Py_ssize_t)(sizeof(L_TW_MEDIA) - 1);
        } else {
            RTVFM_LIT(L_SIM_SID);
            f->sid_off = pos;
            if ((pos = rtvfm_alnums(p, pos, end)) < 0) return -1;
            f->sid_len = pos - f->sid_off;
            RTVFM_LIT(L_SIM_MEDIA);
        }
        f->track_off = pos;
        if ((pos = rtvfm_alnums(p, pos, end)) < 0) return -1;
        f->track_len = pos - f->track_off;
        RTVFM_LIT(L_CHUNK);
        if ((pos = rtvfm_digits(p, pos, end, &f->chunk)) < 0) return -1;
        RTVFM_LIT(L_TS);
        if ((pos = rtvfm_digits(p, pos, end, &f->ts)) < 0) return -1;
        RTVFM_LIT(L_PAYLOAD);
        f->pay_off = pos;
        pos = rtvfm_b64chars(p, pos, end);
        f->pay_len = pos - f->pay_off;
        if (twilio) {
            RTVFM_LIT(L_TW_SID);
            f->sid_off = pos;
            if ((pos = rtvfm_alnums(p, pos, end)) < 0) return -1;
            f->sid_len = pos - f->sid_off;
            RTVFM_LIT(L_TW_END);
        } else {
            RTVFM_LIT(L_SIM_END);
        }
        if (pos != end) return -1;
        q = rtvfm_b64_len(p + f->pay_off, f->pay_len);
        if (q < 0) return -1;
        f->n = q;
        return 0;
    }
    """
    ctypedef struct rtvfm_fields:
        int64_t seq, chunk, ts
        Py_ssize_t sid_off, sid_len, track_off, track_len, pay_off, pay_len, n
    int RTVFM_SID_MAX, RTVFM_TRACK_MAX
    int16_t rtvfm_ulaw[256]
    void rtvfm_init()
    int rtvfm_parse(const uint8_t *p, Py_ssize_t end, rtvfm_fields *f) nogil
    void rtvfm_b64_decode(const uint8_t *s, Py_ssize_t m, uint8_t *out) nogil

rtvfm_init()

#: Codes in one 20 ms frame at 8 kHz: the frame that is also μ-law-decoded into the PCM buffer.
FRAME_BYTES = 160
#: Default capacity of the decoded-payload buffer (a larger payload falls back).
DEFAULT_CAPACITY = 1600


cdef class MediaKernel:
    """Per-call parser/decoder of plain ``media`` messages (see the module docstring).

    ``pcm`` is the call's writable 320-byte int16 frame buffer (exported for the kernel's lifetime, so it cannot
    be resized). After a :meth:`feed` that returned ``n >= 0``: :attr:`seq`, :attr:`chunk`, :attr:`timestamp`,
    :attr:`stream_sid`, :attr:`track` describe the message, :attr:`payload` is a view of the ``n`` decoded
    μ-law bytes, and when ``n == 160`` the PCM buffer holds the decoded frame. Both buffers are overwritten
    by the next feed: consumers that keep audio must copy it.
    """

    cdef Py_buffer _pcm
    cdef bint _has_pcm
    cdef bytearray _ulaw_store
    cdef uint8_t *_ulaw
    cdef Py_ssize_t _capacity
    cdef object _frame_view
    cdef object _all_view
    cdef char _sid[64]
    cdef char _track[32]
    cdef Py_ssize_t _sid_len
    cdef Py_ssize_t _track_len
    #: the last accepted message's sequenceNumber, chunk and timestamp
    cdef readonly long long seq
    cdef readonly long long chunk
    cdef readonly long long timestamp
    #: decoded payload length of the last accepted message (-1 before any)
    cdef readonly Py_ssize_t length

    def __cinit__(self, pcm, Py_ssize_t capacity=DEFAULT_CAPACITY):
        self._has_pcm = False
        PyObject_GetBuffer(pcm, &self._pcm, PyBUF_SIMPLE | PyBUF_WRITABLE)
        self._has_pcm = True
        if self._pcm.len < 2 * FRAME_BYTES:
            raise ValueError("pcm buffer must hold at least 320 bytes (160 int16 samples)")
        if capacity < FRAME_BYTES:
            raise ValueError("capacity must be at least 160 bytes")
        self._capacity = capacity
        self._ulaw_store = bytearray(capacity)
        self._ulaw = <uint8_t *>(<char *>self._ulaw_store)
        self._all_view = memoryview(self._ulaw_store)
        self._frame_view = self._all_view[:FRAME_BYTES]
        self.length = -1
        self.seq = self.chunk = self.timestamp = 0
        self._sid_len = self._track_len = 0

    def __dealloc__(self):
        if self._has_pcm:
            PyBuffer_Release(&self._pcm)

    def feed(self, data):
        """Parse one text payload (``bytes`` or any buffer). Returns the decoded payload length (>= 0), or -1:
        not a plain media message (or over a limit): fall back. Never raises for any ``bytes`` input."""
        cdef Py_buffer view
        cdef Py_ssize_t n
        if PyBytes_CheckExact(data):
            return self._feed(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            n = self._feed(<const uint8_t *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return n

    cdef Py_ssize_t _feed(self, const uint8_t *p, Py_ssize_t size) noexcept:
        cdef rtvfm_fields f
        cdef Py_ssize_t i
        cdef int16_t *out
        cdef const uint8_t *u
        if rtvfm_parse(p, size, &f) != 0:
            return -1
        if f.n > self._capacity or f.sid_len > RTVFM_SID_MAX or f.track_len > RTVFM_TRACK_MAX:
            return -1
        rtvfm_b64_decode(p + f.pay_off, f.pay_len, self._ulaw)
        if f.n == FRAME_BYTES:
            out = <int16_t *>self._pcm.buf
            u = self._ulaw
            for i in range(FRAME_BYTES):
                out[i] = rtvfm_ulaw[u[i]]
        memcpy(self._sid, p + f.sid_off, <size_t>f.sid_len)
        memcpy(self._track, p + f.track_off, <size_t>f.track_len)
        self._sid_len = f.sid_len
        self._track_len = f.track_len
        self.seq = f.seq
        self.chunk = f.chunk
        self.timestamp = f.ts
        self.length = f.n
        return f.n

    @property
    def payload(self):
        """The last accepted message's decoded μ-law bytes: a view of the kernel's buffer (valid until the next
        :meth:`feed`). No allocation for a 20 ms frame."""
        if self.length == FRAME_BYTES:
            return self._frame_view
        return self._all_view[:max(self.length, 0)]

    @property
    def stream_sid(self):
        """The last accepted message's ``streamSid`` (built on demand: not for the per-frame path)."""
        return (<char *>self._sid)[:self._sid_len].decode("ascii")

    @property
    def track(self):
        """The last accepted message's ``media.track`` (built on demand)."""
        return (<char *>self._track)[:self._track_len].decode("ascii")
