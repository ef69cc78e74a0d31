/* collectors.enforcement._fast_answer: the exec answerer's wait and its cached answers, compiled.
 *
 * The exec answerer (exec_answerer.py) is Python, and every held exec used to pass through its
 * interpreter: on this project's 2-core test VM a cached answer cost an exec ~90-145 us at p50
 * against ~30 us for a native process that answers at once (bench/collector.py). Most of the
 * difference is the interpreter itself waking up cold, not the answer's work. So the wait and
 * the one common case, an exec whose answer is cached, run here; everything else (a caller
 * not placed yet, a file in the container's upper layer, a cache miss, the asks, deadlines,
 * fail modes, messages, metrics) goes back to the Python code, which stays the reference: with
 * COLLECTOR_FAST_ANSWERS=false it answers everything itself, by the same rules.
 *
 * Nothing is decided here that Python did not decide first. The lineage, the held workloads
 * and the cache are the answerer's own Python dicts, read (and the lineage fed) under the GIL:
 *   creators  {pid: creator pid}           fed here from the process connector (FORK/EXIT)
 *   placed    {pid: Placement}             filled by Python's /proc reads
 *   holds     {container: FastHold}        workloads held before exec (Python's)
 *   cache     OrderedDict {CacheKey: allow}
 * Their layouts are cache_key.py's, handed over by name when this object is made
 * (key_fields, hold_fields, placement_fields): a key is built in the order of its fields there,
 * so an answer cached by either side is found by both. What the names cannot say is
 * LAYOUT_VERSION, which must be cache_key.py's KEY_LAYOUT_VERSION (fast_answer.py checks it).
 * The GIL is released only while waiting.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The meaning of the key's fields, as cache_key.py's KEY_LAYOUT_VERSION says it. */
#define LAYOUT_VERSION 1

/* The fields this code knows how to fill or read, by name; their positions are Python's. */
enum { K_WORKLOAD, K_STAMP, K_PATH, K_INJECTED, K_ORIGIN, K_NETCAT, N_KEY };
static const char *const KEY_NAMES[N_KEY] = {"workload", "stamp",  "path",
                                             "injected", "origin", "netcat"};
enum { H_STAMP, H_UPPER, H_NETCATS, N_HOLD };
static const char *const HOLD_NAMES[N_HOLD] = {"stamp", "upper", "netcats"};
enum { P_CONTAINER, P_FAMILY, N_PLACEMENT };
static const char *const PLACEMENT_NAMES[N_PLACEMENT] = {"container", "family"};

#define MAX_FDS 8
#define EVENTS_BUFFER (64 * 1024)
#define DATAGRAM 256

/* linux/cn_proc.h, as collectors/kernel/connector.py reads it */
#define PROC_EVENT_FORK 0x00000001u
#define PROC_EVENT_EXIT 0x80000000u
#define CONNECTOR_HEAD (16 + 20 + 16) /* nlmsghdr, cn_msg, proc_event's what/cpu/timestamp */

typedef struct {
    PyObject_HEAD
    int group;
    int kernel_cache;
    Py_ssize_t lineage_limit;
    PyObject *creators, *placed, *holds, *cache, *image; /* image: Origin.IMAGE */
    PyObject *move_to_end;                               /* "move_to_end" */
    Py_ssize_t key_order[N_KEY];      /* the K_ field at each position of a key */
    Py_ssize_t hold_at[N_HOLD];       /* the position of each H_ field in a FastHold */
    Py_ssize_t placement_at[N_PLACEMENT]; /* ... and of each P_ field in a Placement */
    double *bounds;                                      /* the histogram's, in seconds */
    Py_ssize_t n_bounds;
    unsigned long long *counts; /* n_bounds + 1 */
    double sum;
    unsigned long long allowed, denied, remembered; /* every one answered was placed by lineage */
    /* events the kernel could not give us a descriptor for (each dropped; a held exec denied
     * by the kernel), and reads that found its queue had overflowed: as kernel/fanotify.py
     * counts */
    unsigned long long read_errors, overflows;
    int ignore_errno; /* the first failure to set an ignore mark (0: none) */
    char events[EVENTS_BUFFER] __attribute__((aligned(8)));
} FastAnswer;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Drop the oldest entry of a dict past `limit` (insertion order, as lineage.py does). */
static int trim(PyObject *dict, Py_ssize_t limit) {
    if (PyDict_GET_SIZE(dict) <= limit)
        return 0;
    Py_ssize_t at = 0;
    PyObject *key, *value;
    if (!PyDict_Next(dict, &at, &key, &value))
        return 0;
    Py_INCREF(key);
    int rc = PyDict_DelItem(dict, key);
    Py_DECREF(key);
    return rc;
}

static int del_if_present(PyObject *dict, PyObject *key) {
    if (PyDict_DelItem(dict, key) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return -1;
        PyErr_Clear();
    }
    return 0;
}

/* lineage.py's Lineage.feed for one connector message. */
static int feed(FastAnswer *self, const char *message, ssize_t length) {
    if (length < CONNECTOR_HEAD + 16)
        return 0;
    uint32_t what, f[4];
    memcpy(&what, message + 16 + 20, 4);
    memcpy(f, message + CONNECTOR_HEAD, sizeof f);
    uint32_t pid, tgid;
    if (what == PROC_EVENT_FORK) {
        pid = f[2], tgid = f[3];
    } else if (what == PROC_EVENT_EXIT) {
        pid = f[0], tgid = f[1];
    } else {
        return 0;
    }
    if (pid != tgid)
        return 0; /* a thread: its process's lineage is unchanged */
    PyObject *child = PyLong_FromUnsignedLong(tgid);
    if (child == NULL)
        return -1;
    int rc = 0;
    if (what == PROC_EVENT_FORK) {
        PyObject *creator = PyLong_FromUnsignedLong(f[1]);
        rc = creator == NULL ? -1 : PyDict_SetItem(self->creators, child, creator);
        Py_XDECREF(creator);
        if (rc == 0)
            rc = trim(self->creators, self->lineage_limit);
    } else {
        rc = del_if_present(self->creators, child);
        if (rc == 0)
            rc = del_if_present(self->placed, child);
    }
    Py_DECREF(child);
    return rc;
}

/* Everything the connector has queued. 0, or an errno the connector (or this process's
 * memory) failed with: Python then reads /proc instead, as it does when its own drain fails. */
static int drain(FastAnswer *self, int connector) {
    char message[DATAGRAM];
    for (;;) {
        ssize_t n = recv(connector, message, sizeof message, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) { /* messages were lost: nothing known can be trusted */
                PyDict_Clear(self->creators);
                PyDict_Clear(self->placed);
                continue;
            }
            return errno;
        }
        if (feed(self, message, n) < 0) { /* out of memory: read /proc from now on */
            PyErr_Clear();
            PyDict_Clear(self->creators);
            PyDict_Clear(self->placed);
            return ENOMEM;
        }
    }
}

/* Where `pid` is, as Lineage.placement says (a borrowed reference), or NULL. */
static PyObject *placement_of(FastAnswer *self, PyObject *pid) {
    PyObject *known = PyDict_GetItemWithError(self->placed, pid);
    if (known != NULL || PyErr_Occurred())
        return known;
    PyObject *creator = PyDict_GetItemWithError(self->creators, pid);
    if (creator == NULL)
        return NULL;
    known = PyDict_GetItemWithError(self->placed, creator);
    if (known == NULL)
        return NULL;
    /* its own children need not look further */
    if (PyDict_SetItem(self->placed, pid, known) < 0 || trim(self->placed, self->lineage_limit) < 0)
        return NULL;
    return PyDict_GetItemWithError(self->placed, pid);
}

static void observe(FastAnswer *self, double seconds) {
    Py_ssize_t i = 0;
    while (i < self->n_bounds && seconds > self->bounds[i])
        i++;
    self->counts[i]++;
    self->sum += seconds;
}

/* The cache key of the held exec `fd` of `pid`, built as cache_key.py's cache_key builds it (a
 * new reference), with *family set; NULL without an error: Python's to answer (the caller not
 * placed, its workload not held, the file in the upper layer, an odd path or table entry). */
static PyObject *key_of(FastAnswer *self, int fd, int pid_value, int *family) {
    PyObject *pid = PyLong_FromLong(pid_value);
    if (pid == NULL)
        return NULL;
    PyObject *placement = placement_of(self, pid);
    Py_DECREF(pid);
    if (placement == NULL)
        return NULL;
    if (!PyTuple_Check(placement) || PyTuple_GET_SIZE(placement) != N_PLACEMENT)
        return NULL;
    PyObject *container = PyTuple_GET_ITEM(placement, self->placement_at[P_CONTAINER]);
    *family = PyObject_IsTrue(PyTuple_GET_ITEM(placement, self->placement_at[P_FAMILY]));
    if (*family < 0)
        return NULL;
    PyObject *hold = PyDict_GetItemWithError(self->holds, container);
    if (hold == NULL)
        return NULL;
    if (!PyTuple_Check(hold) || PyTuple_GET_SIZE(hold) != N_HOLD)
        return NULL;
    PyObject *stamp = PyTuple_GET_ITEM(hold, self->hold_at[H_STAMP]),
             *upper = PyTuple_GET_ITEM(hold, self->hold_at[H_UPPER]),
             *netcats = PyTuple_GET_ITEM(hold, self->hold_at[H_NETCATS]);

    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0 || n >= (ssize_t)sizeof path - 1 || path[0] != '/')
        return NULL; /* (a link that fills the buffer may have been cut: Python reads it whole) */
    path[n] = '\0';
    if (upper != Py_None) { /* exe_origin's common case: not in the upper layer */
        char in_upper[PATH_MAX * 2];
        if (!PyBytes_Check(upper))
            return NULL;
        int length = snprintf(in_upper, sizeof in_upper, "%s%s", PyBytes_AS_STRING(upper), path);
        if (length < 0 || length >= (int)sizeof in_upper)
            return NULL;
        if (access(in_upper, F_OK) == 0 || errno != ENOENT)
            return NULL; /* new, modified or a copy-up: Python compares the layers */
    }
    PyObject *text = PyUnicode_DecodeFSDefaultAndSize(path, n);
    if (text == NULL)
        return NULL;
    int netcat = PySequence_Contains(netcats, text);
    if (netcat < 0) {
        Py_DECREF(text);
        return NULL;
    }
    PyObject *key = PyTuple_New(N_KEY);
    if (key == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < N_KEY; i++) {
        PyObject *value = NULL;
        switch (self->key_order[i]) {
        case K_WORKLOAD: value = container; break;
        case K_STAMP: value = stamp; break;
        case K_PATH: value = text; break;
        case K_INJECTED: value = *family ? Py_False : Py_True; break;
        case K_ORIGIN: value = self->image; break; /* the only origin answered here */
        case K_NETCAT: value = netcat ? Py_True : Py_False; break;
        }
        Py_INCREF(value);
        PyTuple_SET_ITEM(key, i, value);
    }
    Py_DECREF(text);
    return key;
}

/* 1: answered from the cache; 0: Python's to answer; -1: a Python error. */
static int try_cached(FastAnswer *self, int fd, int pid_value, double started) {
    int family = 0;
    PyObject *key = key_of(self, fd, pid_value, &family);
    if (key == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *cached = PyDict_GetItemWithError(self->cache, key);
    if (cached == NULL) {
        Py_DECREF(key);
        return PyErr_Occurred() ? -1 : 0;
    }
    int allow = PyObject_IsTrue(cached);
    PyObject *moved = allow < 0 ? NULL : PyObject_CallMethodOneArg(self->cache, self->move_to_end, key);
    Py_DECREF(key);
    if (moved == NULL)
        return -1;
    Py_DECREF(moved);

    struct fanotify_response answer = {.fd = fd, .response = allow ? FAN_ALLOW : FAN_DENY};
    if (write(self->group, &answer, sizeof answer) < 0)
        return 0; /* Python answers it, and says why that failed if it does again */
    /* The kernel may allow this file's later execs itself: allowed for the container's own
     * process, a file from the image (the only origin answered here), with a single name. */
    struct stat st;
    if (allow && self->kernel_cache && family && fstat(fd, &st) == 0 && st.st_nlink == 1) {
        if (fanotify_mark(self->group, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK, FAN_OPEN_EXEC_PERM,
                          fd, NULL) == 0)
            self->remembered++;
        else if (self->ignore_errno == 0) /* (out of marks, say): said once by Python */
            self->ignore_errno = errno;
    }
    close(fd);
    if (allow)
        self->allowed++;
    else
        self->denied++;
    observe(self, now_s() - started);
    return 1;
}

static void allow_and_close(FastAnswer *self, int fd) {
    struct fanotify_response answer = {.fd = fd, .response = FAN_ALLOW};
    (void)!write(self->group, &answer, sizeof answer);
    close(fd);
}

/* A read that failed with one of these is this code's fault or a closed group. Any other error
 * (EMFILE, ENFILE, ENOMEM, EACCES...) is the kernel failing to open the next event's file for
 * us: it denied that exec itself and the group goes on, so it is counted, never raised (five
 * raised in a row would close the group: every exec of the node unheld). */
static int broken_read(int error) {
    return error == EBADF || error == EINVAL || error == EFAULT;
}

/* A held exec for Python to answer; if even that fails (no memory), it goes ahead. */
static void hand_over(FastAnswer *self, PyObject *passed, int fd, int pid) {
    PyObject *pair = Py_BuildValue("(ii)", fd, pid);
    if (pair == NULL || PyList_Append(passed, pair) < 0) {
        PyErr_Clear();
        allow_and_close(self, fd);
    }
    Py_XDECREF(pair);
}

/* wait(connector_fd, others, timeout) -> (ready others, [(fd, pid) for Python], connector_errno)
 *
 * Waits until one of `others` is ready, a held exec needs Python, or `timeout` seconds pass;
 * meanwhile drains the connector (-1: none) into the lineage and answers every cached exec. */
static PyObject *FastAnswer_wait(FastAnswer *self, PyObject *args) {
    int connector;
    PyObject *others;
    double timeout;
    if (!PyArg_ParseTuple(args, "iO!d", &connector, &PyList_Type, &others, &timeout))
        return NULL;
    Py_ssize_t n_others = PyList_GET_SIZE(others);
    if (n_others > MAX_FDS - 2) {
        PyErr_SetString(PyExc_ValueError, "too many descriptors");
        return NULL;
    }
    struct pollfd fds[MAX_FDS];
    nfds_t nfds = 0;
    fds[nfds++] = (struct pollfd){.fd = self->group, .events = POLLIN};
    nfds_t first_other = nfds;
    for (Py_ssize_t i = 0; i < n_others; i++) {
        int fd = (int)PyLong_AsLong(PyList_GET_ITEM(others, i));
        if (fd == -1 && PyErr_Occurred())
            return NULL;
        fds[nfds++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    nfds_t connector_at = nfds;
    if (connector >= 0)
        fds[nfds++] = (struct pollfd){.fd = connector, .events = POLLIN};

    PyObject *passed = PyList_New(0), *ready = PyList_New(0);
    if (passed == NULL || ready == NULL)
        goto fail;
    int connector_errno = 0;
    double deadline = now_s() + (timeout > 0 ? timeout : 0);
    for (;;) {
        double left = deadline - now_s();
        int ms = left > 0 ? (int)(left * 1000.0 + 0.999) : 0;
        int woke;
        Py_BEGIN_ALLOW_THREADS
        woke = poll(fds, nfds, ms);
        Py_END_ALLOW_THREADS
        if (woke < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto fail;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            /* never spin at a real-time priority on a broken group: Python's loop gives up */
            PyErr_Format(PyExc_OSError, "the fanotify group failed (poll events %#x)",
                         fds[0].revents);
            goto fail;
        }
        if (connector >= 0 && nfds > connector_at && (fds[connector_at].revents & POLLNVAL)) {
            connector_errno = EBADF;
            break;
        }
        double started = now_s();
        ssize_t length = 0;
        if (fds[0].revents & POLLIN) {
            length = read(self->group, self->events, sizeof self->events);
            if (length < 0 && errno != EAGAIN && errno != EINTR) {
                if (broken_read(errno)) {
                    PyErr_SetFromErrno(PyExc_OSError);
                    goto fail;
                }
                self->read_errors++;
            }
        }
        /* after the read: each caller's fork was queued before its exec was held */
        if (connector >= 0 && connector_errno == 0) {
            connector_errno = drain(self, connector);
            if (connector_errno != 0)
                nfds = connector_at; /* Python closes it: not polled again meanwhile */
        }
        struct fanotify_event_metadata *event = (struct fanotify_event_metadata *)self->events;
        for (; length > 0 && FAN_EVENT_OK(event, length); event = FAN_EVENT_NEXT(event, length)) {
            if (event->vers != FANOTIFY_METADATA_VERSION) {
                PyErr_Format(PyExc_OSError, "unexpected fanotify record (version %d)", event->vers);
                goto fail; /* as Python's reader: its loop gives up after five */
            }
            if (event->mask & FAN_Q_OVERFLOW) {
                self->overflows++;
                continue;
            }
            if (event->fd < 0) {
                self->read_errors++;
                continue;
            }
            if (!(event->mask & FAN_OPEN_EXEC_PERM)) { /* not ours: nobody waits on it then */
                allow_and_close(self, event->fd);
                continue;
            }
            /* the lineage is trusted only while the connector feeds it, as in Python */
            int done = connector >= 0 && connector_errno == 0
                           ? try_cached(self, event->fd, event->pid, started)
                           : 0;
            if (done < 0) { /* Python answers it (and the error is logged there) */
                PyErr_Clear();
                done = 0;
            }
            if (done == 0)
                hand_over(self, passed, event->fd, event->pid);
        }
        for (nfds_t i = first_other; i < connector_at; i++) {
            if (fds[i].revents) {
                PyObject *fd = PyLong_FromLong(fds[i].fd);
                if (fd == NULL || PyList_Append(ready, fd) < 0) {
                    Py_XDECREF(fd);
                    goto fail;
                }
                Py_DECREF(fd);
            }
        }
        if (PyList_GET_SIZE(passed) || PyList_GET_SIZE(ready) || connector_errno
            || now_s() >= deadline)
            break;
    }
    return Py_BuildValue("(NNi)", ready, passed, connector_errno);
fail:
    /* Whatever was read for Python goes ahead: nobody would answer it (as when Python's own
     * answer fails, or the group closes). */
    if (passed != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(passed); i++) {
            PyObject *pair = PyList_GET_ITEM(passed, i);
            allow_and_close(self, (int)PyLong_AsLong(PyTuple_GET_ITEM(pair, 0)));
        }
    }
    Py_XDECREF(ready);
    Py_XDECREF(passed);
    return NULL;
}

/* key_for(fd, pid) -> the key a held exec of that descriptor by that pid is looked up by, or
 * None when it is Python's to answer (tests/unit/test_fast_answer_keys.py sets it beside
 * Python's). */
static PyObject *FastAnswer_key_for(FastAnswer *self, PyObject *args) {
    int fd, pid, family = 0;
    if (!PyArg_ParseTuple(args, "ii", &fd, &pid))
        return NULL;
    PyObject *key = key_of(self, fd, pid, &family);
    if (key == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return key;
}

static PyObject *FastAnswer_counts(FastAnswer *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *histogram = PyList_New(self->n_bounds + 2);
    if (histogram == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i <= self->n_bounds; i++)
        PyList_SET_ITEM(histogram, i, PyLong_FromUnsignedLongLong(self->counts[i]));
    PyList_SET_ITEM(histogram, self->n_bounds + 1, PyFloat_FromDouble(self->sum));
    return Py_BuildValue("{sKsKsKsKsKsisN}", "allowed", self->allowed, "denied", self->denied,
                         "remembered", self->remembered, "read_errors", self->read_errors,
                         "overflows", self->overflows, "ignore_errno", self->ignore_errno,
                         "cached_answer", histogram);
}

/* Where each of `known` is in `names` (a tuple of str, Python's layout of one table): at[k] its
 * position, order[i] (if not NULL) the one at position i. Every name known, each exactly once. */
static int layout(PyObject *names, const char *const *known, Py_ssize_t n_known, const char *what,
                  Py_ssize_t *at, Py_ssize_t *order) {
    if (PyTuple_GET_SIZE(names) != n_known) {
        PyErr_Format(PyExc_ValueError, "%s: %R has %zd fields, this build knows %zd (rebuild it: "
                     "pip install -e .)", what, names, PyTuple_GET_SIZE(names), n_known);
        return -1;
    }
    for (Py_ssize_t k = 0; k < n_known; k++)
        at[k] = -1;
    for (Py_ssize_t i = 0; i < n_known; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        Py_ssize_t k = 0;
        while (k < n_known && !(PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(
                                                             name, known[k]) == 0))
            k++;
        if (k == n_known || at[k] >= 0) {
            PyErr_Format(PyExc_ValueError, "%s: field %R is not one this build knows, or twice "
                         "(rebuild it: pip install -e .)", what, name);
            return -1;
        }
        at[k] = i;
        if (order != NULL)
            order[i] = k;
    }
    return 0;
}

static int FastAnswer_init(FastAnswer *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"group_fd", "creators", "placed", "holds", "cache", "image",
                            "buckets", "kernel_cache", "lineage_limit", "key_fields",
                            "hold_fields", "placement_fields", NULL};
    PyObject *buckets, *key_fields, *hold_fields, *placement_fields;
    Py_ssize_t key_at[N_KEY];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iO!O!O!O!OO!pnO!O!O!", names, &self->group,
                                     &PyDict_Type, &self->creators, &PyDict_Type, &self->placed,
                                     &PyDict_Type, &self->holds, &PyDict_Type, &self->cache,
                                     &self->image, &PyTuple_Type, &buckets, &self->kernel_cache,
                                     &self->lineage_limit, &PyTuple_Type, &key_fields,
                                     &PyTuple_Type, &hold_fields, &PyTuple_Type,
                                     &placement_fields))
        return -1;
    if (layout(key_fields, KEY_NAMES, N_KEY, "the cache key", key_at, self->key_order) < 0
        || layout(hold_fields, HOLD_NAMES, N_HOLD, "a held workload", self->hold_at, NULL) < 0
        || layout(placement_fields, PLACEMENT_NAMES, N_PLACEMENT, "a placement",
                  self->placement_at, NULL) < 0)
        return -1;
    Py_INCREF(self->creators);
    Py_INCREF(self->placed);
    Py_INCREF(self->holds);
    Py_INCREF(self->cache);
    Py_INCREF(self->image);
    self->move_to_end = PyUnicode_InternFromString("move_to_end");
    self->n_bounds = PyTuple_GET_SIZE(buckets);
    self->bounds = PyMem_Calloc(self->n_bounds + 1, sizeof(double));
    self->counts = PyMem_Calloc(self->n_bounds + 1, sizeof(unsigned long long));
    if (self->move_to_end == NULL || self->bounds == NULL || self->counts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->n_bounds; i++) {
        self->bounds[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(buckets, i));
        if (self->bounds[i] == -1.0 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static void FastAnswer_dealloc(FastAnswer *self) {
    Py_XDECREF(self->creators);
    Py_XDECREF(self->placed);
    Py_XDECREF(self->holds);
    Py_XDECREF(self->cache);
    Py_XDECREF(self->image);
    Py_XDECREF(self->move_to_end);
    PyMem_Free(self->bounds);
    PyMem_Free(self->counts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FastAnswer_methods[] = {
    {"wait", (PyCFunction)FastAnswer_wait, METH_VARARGS,
     "wait(connector_fd, others, timeout) -> (ready, [(fd, pid)], connector_errno)"},
    {"counts", (PyCFunction)FastAnswer_counts, METH_NOARGS, "what was answered here, cumulative"},
    {"key_for", (PyCFunction)FastAnswer_key_for, METH_VARARGS,
     "key_for(fd, pid) -> the cache key of a held exec, or None (Python's to answer)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastAnswerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "collectors.enforcement._fast_answer.FastAnswer",
    .tp_basicsize = sizeof(FastAnswer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The exec answerer's wait, answering cached execs itself",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastAnswer_init,
    .tp_dealloc = (destructor)FastAnswer_dealloc,
    .tp_methods = FastAnswer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "collectors.enforcement._fast_answer",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fast_answer(void) {
    if (PyType_Ready(&FastAnswerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "LAYOUT_VERSION", LAYOUT_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FastAnswerType);
    if (PyModule_AddObject(m, "FastAnswer", (PyObject *)&FastAnswerType) < 0) {
        Py_DECREF(&FastAnswerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
