/* transport._fast_mac: the record signature of transport/signing.py, compiled.
 *
 * Every event the stream app decides is verified and every verdict it writes is signed, so this
 * runs twice per event on the hot path, where each microsecond is some 3% of the worker's
 * throughput. It reads and writes the one `pw-auth` header and computes its MAC with OpenSSL's
 * SHA-256 (SHA-NI where the CPU has it).
 *
 * The header's value (signing.py says why it is shaped so):
 *   version (1) | len(signer) signer | len(kid) kid | be64 expires (0: none) | tag (16 bytes)
 * Everything before the tag is the "head". The tag is HMAC-SHA256 truncated to 128 bits over
 *   be32(len(topic)) topic | be32(len(head)) head | len|key | len|value
 *   len = be32 of the length, or ff ff ff ff for an absent key or value (a tombstone)
 * signing.py's `_reference_mac` and `_reference_read_auth` stay the reference: the unit tests
 * hold these to the same output on every kind of input.
 * The key's padded inner and outer blocks are hashed once, when the Key is made; each record
 * then costs two context copies and its own bytes. The GIL is held throughout (no shared
 * scratch state is touched without it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 64
#define DIGEST 32
#define TAG 16     /* bytes of the tag: HMAC-SHA256-128 */
#define VERSION 1 /* of the header's layout */
#define MAX_HEADER 512 /* bytes of the header: anything longer is refused unread */
#define MAX_FIELD 255  /* bytes of its signer or key id */
static const char AUTH[] = "pw-auth";

static EVP_MD *sha256;

typedef struct {
    PyObject_HEAD
    EVP_MD_CTX *inner; /* SHA-256 having absorbed key ^ ipad */
    EVP_MD_CTX *outer; /* SHA-256 having absorbed key ^ opad */
    EVP_MD_CTX *work;  /* scratch, reused by every call */
} KeyObject;

static void put_be32(unsigned char *out, uint32_t n) {
    out[0] = (unsigned char)(n >> 24);
    out[1] = (unsigned char)(n >> 16);
    out[2] = (unsigned char)(n >> 8);
    out[3] = (unsigned char)n;
}

static int raise_openssl(const char *what) {
    PyErr_Format(PyExc_RuntimeError, "OpenSSL failed to %s", what);
    return -1;
}

static void Key_dealloc(KeyObject *self) {
    EVP_MD_CTX_free(self->inner);
    EVP_MD_CTX_free(self->outer);
    EVP_MD_CTX_free(self->work);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Key_init(KeyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"secret", NULL};
    Py_buffer secret;
    unsigned char ipad[BLOCK], opad[BLOCK];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &secret))
        return -1;
    if (secret.len > BLOCK) { /* procwarden's keys are 32 bytes: longer ones are not ours */
        PyBuffer_Release(&secret);
        PyErr_SetString(PyExc_ValueError, "a key of more than 64 bytes");
        return -1;
    }
    memset(ipad, 0x36, BLOCK);
    memset(opad, 0x5c, BLOCK);
    for (Py_ssize_t i = 0; i < secret.len; i++) {
        ipad[i] ^= ((const unsigned char *)secret.buf)[i];
        opad[i] ^= ((const unsigned char *)secret.buf)[i];
    }
    PyBuffer_Release(&secret);
    if (self->inner == NULL) {
        self->inner = EVP_MD_CTX_new();
        self->outer = EVP_MD_CTX_new();
        self->work = EVP_MD_CTX_new();
        if (self->inner == NULL || self->outer == NULL || self->work == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    int ok = EVP_DigestInit_ex(self->inner, sha256, NULL) &&
             EVP_DigestUpdate(self->inner, ipad, BLOCK) &&
             EVP_DigestInit_ex(self->outer, sha256, NULL) &&
             EVP_DigestUpdate(self->outer, opad, BLOCK);
    OPENSSL_cleanse(ipad, BLOCK);
    OPENSSL_cleanse(opad, BLOCK);
    return ok ? 0 : raise_openssl("set up a key");
}

/* A str as UTF-8 with surrogates passed through: borrowed from the str when it is ASCII (the
 * common case), else a new bytes object in *owner. */
static int utf8_of(PyObject *s, const char **data, Py_ssize_t *len, PyObject **owner) {
    *owner = NULL;
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "the topic must be str");
        return -1;
    }
    if (PyUnicode_IS_ASCII(s)) {
        *data = (const char *)PyUnicode_DATA(s);
        *len = PyUnicode_GET_LENGTH(s);
        return 0;
    }
    *owner = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
    if (*owner == NULL)
        return -1;
    *data = PyBytes_AS_STRING(*owner);
    *len = PyBytes_GET_SIZE(*owner);
    return 0;
}

static int hash_sized(EVP_MD_CTX *c, const void *data, Py_ssize_t len, int present) {
    unsigned char prefix[4];
    if (present)
        put_be32(prefix, (uint32_t)len);
    else
        memset(prefix, 0xff, 4);
    return EVP_DigestUpdate(c, prefix, 4) && (!present || !len || EVP_DigestUpdate(c, data, (size_t)len));
}

/* The tag of (topic, head, key, value) into out: args are (topic, key, value), head given. */
static int compute(KeyObject *self, PyObject *topic, const unsigned char *head, Py_ssize_t head_len,
                   PyObject *key, PyObject *value, unsigned char out[DIGEST]) {
    const char *text;
    Py_ssize_t text_len;
    PyObject *owner = NULL;
    PyObject *parts[2] = {key, value};
    Py_buffer bufs[2];
    int have[2] = {0, 0};
    int result = -1;
    unsigned char inner[DIGEST];
    unsigned int got = 0;

    if (utf8_of(topic, &text, &text_len, &owner) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (parts[i] == Py_None)
            continue;
        if (PyObject_GetBuffer(parts[i], &bufs[i], PyBUF_SIMPLE) < 0)
            goto done;
        have[i] = 1;
        if (bufs[i].len >= 0xffffffffLL) {
            PyErr_SetString(PyExc_ValueError, "a key or value of 4 GiB or more");
            goto done;
        }
    }
    if (text_len >= 0xffffffffLL) {
        PyErr_SetString(PyExc_ValueError, "a topic of 4 GiB or more");
        goto done;
    }
    EVP_MD_CTX *c = self->work;
    if (!EVP_MD_CTX_copy_ex(c, self->inner) || !hash_sized(c, text, text_len, 1) ||
        !hash_sized(c, head, head_len, 1) ||
        !hash_sized(c, have[0] ? bufs[0].buf : NULL, have[0] ? bufs[0].len : 0, have[0]) ||
        !hash_sized(c, have[1] ? bufs[1].buf : NULL, have[1] ? bufs[1].len : 0, have[1]) ||
        !EVP_DigestFinal_ex(c, inner, &got) || !EVP_MD_CTX_copy_ex(c, self->outer) ||
        !EVP_DigestUpdate(c, inner, DIGEST) || !EVP_DigestFinal_ex(c, out, &got)) {
        raise_openssl("hash a record");
        goto done;
    }
    result = 0;
done:
    Py_XDECREF(owner);
    for (int i = 0; i < 2; i++)
        if (have[i])
            PyBuffer_Release(&bufs[i]);
    return result;
}

/* seal(topic, head_start, expires, key, value) -> the header's value: head_start (version,
 * signer, key id: what signing.py's `_head_start` makes, fixed per signer), the expiry, the tag. */
static PyObject *Key_seal(KeyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned char mac[DIGEST];
    if (nargs != 5 || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "expected (topic, head_start: bytes, expires, key, value)");
        return NULL;
    }
    unsigned long long expires = PyLong_AsUnsignedLongLong(args[2]);
    if (expires == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t start = PyBytes_GET_SIZE(args[1]);
    if (start + 8 + TAG > MAX_HEADER) {
        PyErr_SetString(PyExc_ValueError, "a signer or key id too long for the header");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, start + 8 + TAG);
    if (out == NULL)
        return NULL;
    unsigned char *h = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(h, PyBytes_AS_STRING(args[1]), (size_t)start);
    for (int i = 0; i < 8; i++)
        h[start + i] = (unsigned char)(expires >> (56 - 8 * i));
    if (compute(self, args[0], h, start + 8, args[3], args[4], mac) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    memcpy(h + start + 8, mac, TAG);
    return out;
}

/* opens(header, tag_at, topic, key, value): whether the header's tag (its bytes from tag_at on,
 * as `read_auth` found them) is this record's; compared in constant time. */
static PyObject *Key_opens(KeyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned char mac[DIGEST];
    if (nargs != 5 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "expected (header: bytes, tag_at, topic, key, value)");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    if (at < 0 || PyBytes_GET_SIZE(args[0]) != at + TAG)
        Py_RETURN_FALSE;
    if (compute(self, args[2], h, at, args[3], args[4], mac) < 0)
        return NULL;
    if (CRYPTO_memcmp(mac, h + at, TAG) == 0)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* An ASCII field of the header as str, or NULL with *problem set (no exception). */
static PyObject *ascii_field(const unsigned char *p, Py_ssize_t n, const char **problem,
                             const char *what) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80) {
            *problem = what;
            return NULL;
        }
    return PyUnicode_DecodeASCII((const char *)p, n, "strict");
}

/* read_auth(headers: list) -> (signer, kid, expires, header, tag_at), None when the record has
 * no `pw-auth` header, or a str saying what is wrong with it. Other headers are left alone. */
static PyObject *read_auth(PyObject *module, PyObject *headers) {
    (void)module;
    if (!PyList_CheckExact(headers)) {
        PyErr_SetString(PyExc_TypeError, "read_auth takes a list of (name, value) pairs");
        return NULL;
    }
    PyObject *found = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0)))
            return PyUnicode_FromString("headers that are not (name, value) pairs");
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(pair, 0), AUTH) != 0)
            continue;
        if (found != NULL)
            return PyUnicode_FromString("pw-auth twice");
        found = PyTuple_GET_ITEM(pair, 1);
    }
    if (found == NULL)
        Py_RETURN_NONE;
    if (!PyBytes_CheckExact(found))
        return PyUnicode_FromString("pw-auth is not bytes");
    const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(found);
    Py_ssize_t len = PyBytes_GET_SIZE(found);
    if (len > MAX_HEADER)
        return PyUnicode_FromString("pw-auth too long");
    if (len < 1 || h[0] != VERSION)
        return PyUnicode_FromString("pw-auth of an unknown version");
    if (len < 2 || h[1] == 0 || len < 3 + h[1])
        return PyUnicode_FromString("pw-auth cut short");
    Py_ssize_t n = h[1], m = h[2 + n];
    Py_ssize_t at = 3 + n + m + 8;
    if (m == 0 || len != at + TAG)
        return PyUnicode_FromString("pw-auth is not its length");
    const char *problem = NULL;
    PyObject *signer = ascii_field(h + 2, n, &problem, "pw-auth signer is not ASCII");
    if (signer == NULL)
        return problem ? PyUnicode_FromString(problem) : NULL;
    PyObject *kid = ascii_field(h + 3 + n, m, &problem, "pw-auth key id is not ASCII");
    if (kid == NULL) {
        Py_DECREF(signer);
        return problem ? PyUnicode_FromString(problem) : NULL;
    }
    unsigned long long expires = 0;
    for (int i = 0; i < 8; i++)
        expires = (expires << 8) | h[3 + n + m + i];
    return Py_BuildValue("(NNKOn)", signer, kid, expires, found, at);
}

static PyMethodDef module_methods[] = {
    {"read_auth", (PyCFunction)read_auth, METH_O,
     "read_auth(headers) -> (signer, kid, expires, header, tag_at) | None | problem: str"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Key_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Key_seal, METH_FASTCALL,
     "seal(topic, head_start, expires, key, value) -> the pw-auth header's value"},
    {"opens", (PyCFunction)(void (*)(void))Key_opens, METH_FASTCALL,
     "opens(header, tag_at, topic, key, value) -> bool: the tag is this record's (constant time)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "transport._fast_mac.Key",
    .tp_doc = "Key(secret): HMAC-SHA256-128 with its padded key hashed once",
    .tp_basicsize = sizeof(KeyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Key_init,
    .tp_dealloc = (destructor)Key_dealloc,
    .tp_methods = Key_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fast_mac", "The record signature of transport/signing.py, compiled.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast_mac(void) {
    if (sha256 == NULL) {
        sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (sha256 == NULL) {
            PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
            return NULL;
        }
    }
    if (PyType_Ready(&KeyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&KeyType);
    if (PyModule_AddObject(m, "Key", (PyObject *)&KeyType) < 0) {
        Py_DECREF(&KeyType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "AUTH", AUTH) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", VERSION) < 0 ||
        PyModule_AddIntConstant(m, "TAG", TAG) < 0 ||
        PyModule_AddIntConstant(m, "MAX_FIELD", MAX_FIELD) < 0 ||
        PyModule_AddIntConstant(m, "MAX_HEADER", MAX_HEADER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
