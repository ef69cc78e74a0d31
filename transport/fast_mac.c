/* transport._fast_mac: the record MAC of transport/signing.py, compiled.
 *
 * Every event the stream app decides is verified and every verdict it writes is signed, so the
 * MAC runs twice per event on the hot path. In Python it cost ~6 us a record here (joining and
 * length-prefixing the parts, two hash copies, the hex): as much as deciding the event. This
 * computes the same bytes in one call, with OpenSSL's SHA-256 (SHA-NI where the CPU has it).
 *
 * What is hashed is signing.py's `_mac`, which stays the reference (tests/unit/test_signing.py
 * holds the two to the same output on every kind of input):
 *   HMAC-SHA256(key, be32(len(head)) head  len|key  len|value)
 *   head = topic \0 signer \0 kid \0 expires   (UTF-8, surrogates passed through)
 *   len  = be32 of the length, or ff ff ff ff for an absent key or value (a tombstone)
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
        PyErr_SetString(PyExc_TypeError, "topic, signer, kid and expires must be str");
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

/* mac(topic, signer, kid, expires, key, value) into out. */
static int compute(KeyObject *self, PyObject *const *args, Py_ssize_t nargs,
                   unsigned char out[DIGEST]) {
    const char *text[4];
    Py_ssize_t text_len[4];
    PyObject *owners[4] = {NULL, NULL, NULL, NULL};
    Py_buffer bufs[2];
    int have[2] = {0, 0};
    int result = -1;
    unsigned char prefix[4], inner[DIGEST];
    unsigned int got = 0;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "expected (topic, signer, kid, expires, key, value)");
        return -1;
    }
    Py_ssize_t head = 3; /* the three separators */
    for (int i = 0; i < 4; i++) {
        if (utf8_of(args[i], &text[i], &text_len[i], &owners[i]) < 0)
            goto done;
        head += text_len[i];
    }
    for (int i = 0; i < 2; i++) {
        PyObject *b = args[4 + i];
        if (b == Py_None)
            continue;
        if (PyObject_GetBuffer(b, &bufs[i], PyBUF_SIMPLE) < 0)
            goto done;
        have[i] = 1;
        if (bufs[i].len >= 0xffffffffLL) {
            PyErr_SetString(PyExc_ValueError, "a key or value of 4 GiB or more");
            goto done;
        }
    }
    if (head > 0xfffffffeLL) {
        PyErr_SetString(PyExc_ValueError, "a record head of 4 GiB or more");
        goto done;
    }
    EVP_MD_CTX *c = self->work;
    put_be32(prefix, (uint32_t)head);
    if (!EVP_MD_CTX_copy_ex(c, self->inner) || !EVP_DigestUpdate(c, prefix, 4)) {
        raise_openssl("hash a record");
        goto done;
    }
    for (int i = 0; i < 4; i++) {
        if ((text_len[i] && !EVP_DigestUpdate(c, text[i], (size_t)text_len[i])) ||
            (i < 3 && !EVP_DigestUpdate(c, "", 1))) {
            raise_openssl("hash a record");
            goto done;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (have[i])
            put_be32(prefix, (uint32_t)bufs[i].len);
        else
            memset(prefix, 0xff, 4);
        if (!EVP_DigestUpdate(c, prefix, 4) ||
            (have[i] && bufs[i].len && !EVP_DigestUpdate(c, bufs[i].buf, (size_t)bufs[i].len))) {
            raise_openssl("hash a record");
            goto done;
        }
    }
    if (!EVP_DigestFinal_ex(c, inner, &got) || !EVP_MD_CTX_copy_ex(c, self->outer) ||
        !EVP_DigestUpdate(c, inner, DIGEST) || !EVP_DigestFinal_ex(c, out, &got)) {
        raise_openssl("hash a record");
        goto done;
    }
    result = 0;
done:
    for (int i = 0; i < 4; i++)
        Py_XDECREF(owners[i]);
    for (int i = 0; i < 2; i++)
        if (have[i])
            PyBuffer_Release(&bufs[i]);
    return result;
}

static const char HEX[] = "0123456789abcdef";

static PyObject *Key_hexmac(KeyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned char mac[DIGEST];
    char hex[2 * DIGEST];
    if (compute(self, args, nargs, mac) < 0)
        return NULL;
    for (int i = 0; i < DIGEST; i++) {
        hex[2 * i] = HEX[mac[i] >> 4];
        hex[2 * i + 1] = HEX[mac[i] & 15];
    }
    return PyBytes_FromStringAndSize(hex, 2 * DIGEST);
}

/* matches(signature, topic, signer, kid, expires, key, value): whether `signature` (the hex the
 * header carries, str) is this record's MAC; compared in constant time. */
static PyObject *Key_matches(KeyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned char mac[DIGEST];
    char hex[2 * DIGEST];
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "expected (signature, topic, signer, kid, expires, key, value)");
        return NULL;
    }
    if (!PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "the signature must be str");
        return NULL;
    }
    if (compute(self, args + 1, nargs - 1, mac) < 0)
        return NULL;
    PyObject *sig = args[0];
    if (!PyUnicode_IS_ASCII(sig) || PyUnicode_GET_LENGTH(sig) != 2 * DIGEST)
        Py_RETURN_FALSE;
    for (int i = 0; i < DIGEST; i++) {
        hex[2 * i] = HEX[mac[i] >> 4];
        hex[2 * i + 1] = HEX[mac[i] & 15];
    }
    if (CRYPTO_memcmp(hex, PyUnicode_DATA(sig), 2 * DIGEST) == 0)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* read_headers(headers): our four headers' values as a tuple (signer, kid, expires, signature),
 * None where absent; a str saying what is wrong with them; or None when the headers are not a
 * list of (str, bytes | None) pairs, for signing.py's `_our_headers` (the reference) to read.
 * The names and the bound are defined here only: the module exports them to signing.py. */
#define MAX_HEADER 256 /* bytes of one of our headers: anything longer is refused unread */
static const char *const NAMES[4] = {"pw-signer", "pw-kid", "pw-exp", "pw-sig"};

static PyObject *read_headers(PyObject *module, PyObject *headers) {
    (void)module;
    PyObject *got[4] = {NULL, NULL, NULL, NULL};
    PyObject *result = NULL;
    if (headers == Py_None)
        return PyTuple_Pack(4, Py_None, Py_None, Py_None, Py_None);
    if (!PyList_CheckExact(headers))
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0))) {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        int at = -1;
        for (int n = 0; n < 4 && at < 0; n++)
            if (PyUnicode_CompareWithASCIIString(name, NAMES[n]) == 0)
                at = n;
        if (at < 0)
            continue;
        if (got[at] != NULL) {
            result = PyUnicode_FromFormat("%s twice", NAMES[at]);
            goto done;
        }
        if (value == Py_None || (PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) > MAX_HEADER) ||
            (PyUnicode_CheckExact(value) && PyUnicode_GET_LENGTH(value) > MAX_HEADER)) {
            result = PyUnicode_FromFormat("%s empty or too long", NAMES[at]);
            goto done;
        }
        if (PyBytes_CheckExact(value)) {
            const unsigned char *c = (const unsigned char *)PyBytes_AS_STRING(value);
            Py_ssize_t len = PyBytes_GET_SIZE(value);
            for (Py_ssize_t k = 0; k < len; k++)
                if (c[k] & 0x80) {
                    result = PyUnicode_FromFormat("%s is not ASCII", NAMES[at]);
                    goto done;
                }
            got[at] = PyUnicode_DecodeASCII((const char *)c, len, "strict");
            if (got[at] == NULL)
                goto done;
        } else if (PyUnicode_CheckExact(value)) {
            if (!PyUnicode_IS_ASCII(value)) {
                result = PyUnicode_FromFormat("%s is not ASCII", NAMES[at]);
                goto done;
            }
            Py_INCREF(value);
            got[at] = value;
        } else {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
    }
    result = PyTuple_New(4);
    if (result == NULL)
        goto done;
    for (int n = 0; n < 4; n++) {
        PyObject *v = got[n] != NULL ? got[n] : Py_None;
        Py_INCREF(v);
        PyTuple_SET_ITEM(result, n, v);
    }
done:
    for (int n = 0; n < 4; n++)
        Py_XDECREF(got[n]);
    return result;
}

static PyMethodDef module_methods[] = {
    {"read_headers", (PyCFunction)read_headers, METH_O,
     "read_headers(headers) -> (signer, kid, expires, signature) | problem: str | None"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Key_methods[] = {
    {"hexmac", (PyCFunction)(void (*)(void))Key_hexmac, METH_FASTCALL,
     "hexmac(topic, signer, kid, expires, key, value) -> the record's MAC, lowercase hex bytes"},
    {"matches", (PyCFunction)(void (*)(void))Key_matches, METH_FASTCALL,
     "matches(signature, topic, signer, kid, expires, key, value) -> bool, in constant time"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "transport._fast_mac.Key",
    .tp_doc = "Key(secret): HMAC-SHA256 with its padded key hashed once",
    .tp_basicsize = sizeof(KeyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Key_init,
    .tp_dealloc = (destructor)Key_dealloc,
    .tp_methods = Key_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fast_mac", "The record MAC of transport/signing.py, compiled.", -1,
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
    PyObject *names = Py_BuildValue("(ssss)", NAMES[0], NAMES[1], NAMES[2], NAMES[3]);
    if (names == NULL || PyModule_AddObject(m, "HEADER_NAMES", names) < 0) {
        Py_XDECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&KeyType);
    if (PyModule_AddObject(m, "Key", (PyObject *)&KeyType) < 0) {
        Py_DECREF(&KeyType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_HEADER", MAX_HEADER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
