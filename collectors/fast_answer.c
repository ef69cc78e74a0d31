/* collectors._fast_answer: the exec answerer's wait and its cached answers, compiled.
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
 *   placed    {pid: Placement}             (container, family); filled by Python's /proc reads
 *   holds     {container: (stamp, upper, netcats)}  workloads held before exec (Python's)
 *   cache     OrderedDict {(container, stamp, path, injected, origin, netcat): allow}
 * A key is built exactly as Python builds it, so an answer cached by either is found by both.
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

#define MAX_FDS 8
#define EVENTS_BUFFER (64 * 1024)
#define DATAGRAM 256

/* linux/cn_proc.h, as collectors/connector.py reads it */
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
    double *bounds;                                      /* the histogram's, in seconds */
    Py_ssize_t n_bounds;
    unsigned long long *counts; /* n_bounds + 1 */
    double sum;
    unsigned long long allowed, denied, remembered; /* every one answered was placed by lineage */
    /* events the kernel could not give us a descriptor for (each dropped; a held exec denied
     * by the kernel), and reads that found its queue had overflowed: as fanotify.py counts */
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

/* 1: answered from the cache; 0: Python's to answer; -1: a Python error. */
static int try_cached(FastAnswer *self, int fd, int pid_value, double started) {
    PyObject *pid = PyLong_FromLong(pid_value);
    if (pid == NULL)
        return -1;
    PyObject *placement = placement_of(self, pid);
    Py_DECREF(pid);
    if (placement == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(placement) || PyTuple_GET_SIZE(placement) != 2)
        return 0;
    PyObject *container = PyTuple_GET_ITEM(placement, 0);
    int family = PyObject_IsTrue(PyTuple_GET_ITEM(placement, 1));
    if (family < 0)
        return -1;
    PyObject *hold = PyDict_GetItemWithError(self->holds, container);
    if (hold == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(hold) || PyTuple_GET_SIZE(hold) != 3)
        return 0;
    PyObject *stamp = PyTuple_GET_ITEM(hold, 0), *upper = PyTuple_GET_ITEM(hold, 1),
             *netcats = PyTuple_GET_ITEM(hold, 2);

    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0 || path[0] != '/')
        return 0;
    path[n] = '\0';
    if (upper != Py_None) { /* exe_origin's common case: not in the upper layer */
        char in_upper[PATH_MAX * 2];
        if (!PyBytes_Check(upper))
            return 0;
        snprintf(in_upper, sizeof in_upper, "%s%s", PyBytes_AS_STRING(upper), path);
        if (access(in_upper, F_OK) == 0 || errno != ENOENT)
            return 0; /* new, modified or a copy-up: Python compares the layers */
    }
    PyObject *text = PyUnicode_DecodeFSDefaultAndSize(path, n);
    if (text == NULL)
        return -1;
    int netcat = PySequence_Contains(netcats, text);
    if (netcat < 0) {
        Py_DECREF(text);
        return -1;
    }
    PyObject *key = Py_BuildValue("(OONOOO)", container, stamp, text, family ? Py_False : Py_True,
                                  self->image, netcat ? Py_True : Py_False);
    if (key == NULL)
        return -1;
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

static int FastAnswer_init(FastAnswer *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"group_fd", "creators", "placed", "holds", "cache", "image",
                            "buckets", "kernel_cache", "lineage_limit", NULL};
    PyObject *buckets;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iO!O!O!O!OO!pn", names, &self->group,
                                     &PyDict_Type, &self->creators, &PyDict_Type, &self->placed,
                                     &PyDict_Type, &self->holds, &PyDict_Type, &self->cache,
                                     &self->image, &PyTuple_Type, &buckets, &self->kernel_cache,
                                     &self->lineage_limit))
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
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastAnswerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "collectors._fast_answer.FastAnswer",
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
    .m_name = "collectors._fast_answer",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fast_answer(void) {
    if (PyType_Ready(&FastAnswerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FastAnswerType);
    if (PyModule_AddObject(m, "FastAnswer", (PyObject *)&FastAnswerType) < 0) {
        Py_DECREF(&FastAnswerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
