/* circuitry._speedups: the C twins of the types in circuitry/_fastpath.py.
 *
 * Optional: circuitry/_accel.py uses these types when this module imports and passes its self-check,
 * and the pure-Python ones otherwise (no compiler at install time, CIRCUITRY_NO_SPEEDUPS set, or any
 * error). Each type is self-contained, as wrapt's are: it knows its own fields and the small contract
 * written on its Python twin, nothing of the rest of circuitry.
 *
 *   Gate      the lock-free front of a breaker (circuitry.CircuitBreaker subclasses it): enter() and
 *             exit() decide the cases that need no lock — admit while closed, refuse while plainly
 *             open, count a success, a listed failure or a cancellation — and call the subclass's
 *             _enter_slow / _exit_slow / _trip for the rest. Its counters are C integers, so reading
 *             them all (_tally) costs one call, and changing one is atomic under the GIL.
 *   WithBase  `with` / `async with` over a named gate. In Python a `with` block costs two Python frames
 *             and two ContextVar.set calls (a new HAMT node and a Token each); here, two C calls and a
 *             lookup in a small table per object keyed by the running context (see Entry below).
 *   protect   the decorator's wrapper for a plain function: find the gate, enter, call, exit, with no
 *             Python frame of its own (an exception passes through without one, which was most of a
 *             counted failure's overhead).
 *   NO_RESULT what exit() gets when the protected code returned nothing to judge (a `with` block).
 *
 * These types rely on the GIL: a build for a free-threaded interpreter refuses to import (the pure-Python
 * types are then used).
 *
 * One file of about 1,350 lines, over the project's 500, because an extension module is one translation
 * unit: WithBase and protect call Gate's entry and exit directly (a C call, not a method lookup), and
 * the types share the interned names and the NO_RESULT sentinel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifdef Py_GIL_DISABLED
#error "circuitry._speedups relies on the GIL; the pure-Python types serve free-threaded builds"
#endif

static PyObject *str_breakers, *str_create, *str_enter, *str_exit, *str_enter_slow, *str_exit_slow, *str_trip,
    *str_append, *str_open, *str_record_ignored, *str_qualname;
static PyObject *no_result;  /* the NO_RESULT sentinel */

/* -- Gate ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *name;        /* for refusals */
    PyObject *now;         /* the monotonic clock: a callable returning seconds */
    PyObject *refusal;     /* called as refusal(name, "open", opened_at, retry_after) to refuse */
    PyObject *opened_at;   /* wall-clock time of the last opening, or None */
    PyObject *fail_types;  /* the exception types counted here as failures; () for none */
    PyObject *flog;        /* a deque each failure counted here is appended to, or None */
    PyObject *flog_append; /* its bound append method (looked up once, when set), or NULL */
    Py_ssize_t flog_cap;   /* the log's maxlen: a full log takes no more (no eviction on the caller's thread) */
    PyObject *listen;      /* None, or a callable: true while a hook wants this call's refusal/failure event
                              (a ContextListening, a 4-tuple, is answered without calling it) */
    double open_until;     /* the open period's end, on the `now` clock */
    Py_ssize_t gen;        /* the generation: bumped by every transition */
    Py_ssize_t fast;       /* gen: admit and count with no lock; -2: refuse while open; -1: the slow path */
    Py_ssize_t thr1;       /* the consecutive failure that trips, minus one */
    long long ok, fail, ign, rej, cancel;  /* calls by outcome */
    long long consec;      /* consecutive counted failures */
} Gate;

static PyTypeObject GateType;

static int
gate_init(Gate *self, PyObject *args, PyObject *kwds)
{
    PyObject *name, *now, *refusal;
    if (!PyArg_ParseTuple(args, "OOO:Gate", &name, &now, &refusal)) {
        return -1;
    }
    Py_XSETREF(self->name, Py_NewRef(name));
    Py_XSETREF(self->now, Py_NewRef(now));
    Py_XSETREF(self->refusal, Py_NewRef(refusal));
    Py_XSETREF(self->opened_at, Py_NewRef(Py_None));
    Py_XSETREF(self->fail_types, PyTuple_New(0));
    Py_XSETREF(self->flog, Py_NewRef(Py_None));
    Py_CLEAR(self->flog_append);
    Py_XSETREF(self->listen, Py_NewRef(Py_None));
    if (self->fail_types == NULL) {
        return -1;
    }
    self->flog_cap = PY_SSIZE_T_MAX;
    self->open_until = 0.0;
    self->gen = 0;
    self->fast = -1;
    self->thr1 = 0;
    self->ok = self->fail = self->ign = self->rej = self->cancel = self->consec = 0;
    return 0;
}

static int
gate_traverse(Gate *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->now);
    Py_VISIT(self->refusal);
    Py_VISIT(self->opened_at);
    Py_VISIT(self->fail_types);
    Py_VISIT(self->flog);
    Py_VISIT(self->flog_append);
    Py_VISIT(self->listen);
    return 0;
}

static int
gate_clear(Gate *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->now);
    Py_CLEAR(self->refusal);
    Py_CLEAR(self->opened_at);
    Py_CLEAR(self->fail_types);
    Py_CLEAR(self->flog);
    Py_CLEAR(self->flog_append);
    Py_CLEAR(self->listen);
    return 0;
}

static void
gate_dealloc(Gate *self)
{
    /* instances are of a heap subclass: its dealloc untracks, clears weak references and drops the
     * reference to the type around this call */
    PyObject_GC_UnTrack(self);
    gate_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
missing(Gate *self)
{
    PyErr_Format(PyExc_RuntimeError, "%s was not initialised (Gate.__init__ not called)", Py_TYPE(self)->tp_name);
    return NULL;
}

/* 1 while a hook wants this call's refusal or failure event (the slow path builds it), else 0. A
   listening check that fails counts as 1: the hooks then get the event and report their own errors. */
static int
gate_listening(Gate *self)
{
    PyObject *listen = self->listen;
    if (listen == NULL || listen == Py_None) {
        return 0;
    }
    Py_INCREF(listen);  /* the call may run Python code that replaces it */
    PyObject *r;
    if (PyTuple_Check(listen) && PyTuple_GET_SIZE(listen) == 4) {
        /* a circuitry.events.ContextListening (var, key, quiet, method), answered here while the
           variable holds a dict: no Python frame when nothing (or a quiet object) is stored under key */
        PyObject *ctx = NULL;
        if (PyContextVar_Get(PyTuple_GET_ITEM(listen, 0), NULL, &ctx) < 0) {
            Py_DECREF(listen);
            PyErr_Clear();
            return 1;
        }
        if (ctx == NULL) {
            Py_DECREF(listen);
            return 0;
        }
        if (!PyDict_Check(ctx)) {  /* another mapping: its own get(), through the Python twin */
            Py_DECREF(ctx);
            r = PyObject_CallNoArgs(listen);
        }
        else {
            PyObject *obj = PyDict_GetItemWithError(ctx, PyTuple_GET_ITEM(listen, 1));
            Py_XINCREF(obj);
            Py_DECREF(ctx);
            if (obj == NULL || obj == Py_None || (PyObject *)Py_TYPE(obj) == PyTuple_GET_ITEM(listen, 2)) {
                Py_XDECREF(obj);
                Py_DECREF(listen);
                if (PyErr_Occurred()) {
                    PyErr_Clear();
                    return 1;
                }
                return 0;
            }
            r = PyObject_CallMethodNoArgs(obj, PyTuple_GET_ITEM(listen, 3));
            Py_DECREF(obj);
        }
    }
    else {
        r = PyObject_CallNoArgs(listen);
    }
    Py_DECREF(listen);
    if (r == NULL) {
        PyErr_Clear();
        return 1;
    }
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (t < 0) {
        PyErr_Clear();
        return 1;
    }
    return t;
}

/* enter(): the token (new reference), or NULL with the refusal raised. */
static PyObject *
gate_enter_impl(Gate *self)
{
    Py_ssize_t fast = self->fast;
    if (fast >= 0) {
        return PyLong_FromSsize_t(fast);
    }
    if (fast == -2) {  /* open: refuse here while the period runs (an outage is when calls come fastest) */
        if (self->now == NULL) {
            return missing(self);
        }
        PyObject *nowf = Py_NewRef(self->now);  /* the clock may run Python code that replaces it */
        PyObject *now = PyObject_CallNoArgs(nowf);
        Py_DECREF(nowf);
        if (now == NULL) {
            return NULL;
        }
        double n = PyFloat_AsDouble(now);
        Py_DECREF(now);
        if (n == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        double until = self->open_until;  /* read after the clock, as the Python twin does */
        if (n < until && !gate_listening(self)) {
            self->rej++;
            PyObject *retry = PyFloat_FromDouble(until - n);
            if (retry == NULL) {
                return NULL;
            }
            PyObject *err = PyObject_CallFunctionObjArgs(self->refusal, self->name, str_open,
                                                         self->opened_at, retry, NULL);
            Py_DECREF(retry);
            if (err != NULL) {
                PyErr_SetObject((PyObject *)Py_TYPE(err), err);
                Py_DECREF(err);
            }
            return NULL;
        }
    }
    return PyObject_CallMethodNoArgs((PyObject *)self, str_enter_slow);
}

/* The token as a generation: >= 0 for an int token, -1 for anything else. */
static inline Py_ssize_t
token_gen(PyObject *token)
{
    if (!PyLong_CheckExact(token)) {
        return -1;
    }
    Py_ssize_t g = PyLong_AsSsize_t(token);
    if (g == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return g < 0 ? -1 : g;
}

/* exit(token, exc, result): 0, or -1 with an error set. `result` is no_result when there is none. */
static int
gate_exit_impl(Gate *self, PyObject *token, PyObject *exc, PyObject *result)
{
    PyObject *r;
    if (exc == Py_None) {
        Py_ssize_t t = token_gen(token);
        if (t >= 0 && t == self->fast && !PyCoro_CheckExact(result)) {
            self->ok++;
            self->consec = 0;  /* token == fast: closed in this generation, so no lock is needed */
            return 0;
        }
    }
    else if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_Exception)) {
        PyObject *types = self->fail_types;
        if (types != NULL && !(PyTuple_CheckExact(types) && PyTuple_GET_SIZE(types) == 0)) {
            Py_INCREF(types);  /* isinstance may run Python code (__instancecheck__), which may replace it */
            int match = PyObject_IsInstance(exc, types);
            Py_DECREF(types);
            if (match < 0) {
                return -1;
            }
            Py_ssize_t t = token_gen(token);
            /* the generation is read last: isinstance and the listening check may run Python code (a reset()) */
            if (match && t >= 0 && !gate_listening(self) && t == self->gen) {
                self->fail++;
                long long n = ++self->consec;
                PyObject *append = self->flog_append;
                Py_ssize_t logged = append != NULL ? PyObject_Size(self->flog) : 0;
                if (logged < 0) {
                    PyErr_Clear();
                    logged = 0;
                }
                if (append != NULL && logged < self->flog_cap) {
                    Py_INCREF(append);  /* the append may run Python code */
                    r = PyObject_CallOneArg(append, exc);
                    Py_DECREF(append);
                    if (r == NULL) {
                        return -1;
                    }
                    Py_DECREF(r);
                }
                if (n > (long long)self->thr1) {
                    r = PyObject_CallMethodObjArgs((PyObject *)self, str_trip, token, exc, NULL);
                    if (r == NULL) {
                        return -1;
                    }
                    Py_DECREF(r);
                }
                return 0;
            }
        }
    }
    else if (PyLong_CheckExact(token)) {  /* cancelled, holding no permit to give back */
        self->cancel++;
        return 0;
    }
    r = PyObject_CallMethodObjArgs((PyObject *)self, str_exit_slow, token, exc, result, NULL);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *
gate_enter(Gate *self, PyObject *unused)
{
    return gate_enter_impl(self);
}

static PyObject *
gate_exit(Gate *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"token", "exc", "result"};
    PyObject *vals[3] = {NULL, Py_None, no_result};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs < 1 || nargs > 3) {
        if (!(nargs == 0 && nkw > 0)) {
            PyErr_Format(PyExc_TypeError, "exit() takes 1 to 3 arguments (%zd given)", nargs + nkw);
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        vals[i] = args[i];
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int slot = -1;
        for (int j = 0; j < 3; j++) {
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) {
                slot = j;
            }
        }
        if (slot < 0 || slot < nargs) {
            PyErr_Format(PyExc_TypeError, "exit() got an unexpected or repeated keyword argument %R", key);
            return NULL;
        }
        vals[slot] = args[nargs + k];
    }
    if (vals[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "exit() missing required argument 'token'");
        return NULL;
    }
    if (gate_exit_impl(self, vals[0], vals[1], vals[2]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
gate_tally(Gate *self, PyObject *unused)
{
    return Py_BuildValue("(LLLLL)", self->ok, self->fail, self->ign, self->rej, self->cancel);
}

static PyObject *
gate_tick(Gate *self, PyObject *kind)
{
    long k = PyLong_AsLong(kind);
    if (k == -1 && PyErr_Occurred()) {
        return NULL;
    }
    switch (k) {
    case 0: self->ok++; break;
    case 1: self->fail++; break;
    case 2: self->ign++; break;
    case 3: self->rej++; break;
    case 4: self->cancel++; break;
    default:
        PyErr_Format(PyExc_ValueError, "_tick(kind): kind must be 0 to 4, got %ld", k);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
gate_failed_once(Gate *self, PyObject *unused)
{
    return PyLong_FromLongLong(++self->consec);
}

static PyObject *
gate_clear_failures(Gate *self, PyObject *unused)
{
    self->consec = 0;
    Py_RETURN_NONE;
}

static PyObject *
gate_get_consecutive(Gate *self, void *unused)
{
    return PyLong_FromLongLong(self->consec);
}

static PyMethodDef gate_methods[] = {
    {"enter", (PyCFunction)gate_enter, METH_NOARGS,
     "Ask to make a call: a token for exit(), or raises the refusal (CircuitOpenError)."},
    {"exit", (PyCFunction)(void (*)(void))gate_exit, METH_FASTCALL | METH_KEYWORDS,
     "exit(token, exc=None, result=NO_RESULT): report how the call admitted with token ended."},
    {"_tally", (PyCFunction)gate_tally, METH_NOARGS, "(successes, failures, ignored, rejected, cancelled)"},
    {"_tick", (PyCFunction)gate_tick, METH_O, "Count one call: 0 success, 1 failure, 2 ignored, 3 rejected, 4 cancelled."},
    {"_failed_once", (PyCFunction)gate_failed_once, METH_NOARGS, "Count one consecutive failure; returns how many."},
    {"_clear_failures", (PyCFunction)gate_clear_failures, METH_NOARGS, "Consecutive failures start again from 0."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
gate_get_flog(Gate *self, void *unused)
{
    return Py_NewRef(self->flog ? self->flog : Py_None);
}

static int
gate_set_flog(Gate *self, PyObject *value, void *unused)
{
    if (value == NULL) {
        value = Py_None;
    }
    PyObject *append = NULL;
    if (value != Py_None && (append = PyObject_GetAttr(value, str_append)) == NULL) {
        return -1;
    }
    Py_ssize_t cap = PY_SSIZE_T_MAX;  /* no maxlen (or none readable): unbounded */
    if (value != Py_None) {
        PyObject *maxlen = PyObject_GetAttrString(value, "maxlen");
        if (maxlen == NULL) {
            PyErr_Clear();
        }
        else {
            if (maxlen != Py_None) {
                cap = PyLong_AsSsize_t(maxlen);
                if (cap == -1 && PyErr_Occurred()) {
                    PyErr_Clear();
                    cap = PY_SSIZE_T_MAX;
                }
            }
            Py_DECREF(maxlen);
        }
    }
    self->flog_cap = cap;
    Py_XSETREF(self->flog, Py_NewRef(value));
    Py_XSETREF(self->flog_append, append);
    return 0;
}

static PyGetSetDef gate_getset[] = {
    {"consecutive_failures", (getter)gate_get_consecutive, NULL,
     "Counted failures since the last success or transition (0 while not closed).", NULL},
    {"_flog", (getter)gate_get_flog, (setter)gate_set_flog,
     "The deque counted failures are appended to, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef gate_members[] = {
    {"name", T_OBJECT_EX, offsetof(Gate, name), READONLY, "The name refusals carry."},
    {"_now", T_OBJECT_EX, offsetof(Gate, now), 0, NULL},
    {"_refusal", T_OBJECT_EX, offsetof(Gate, refusal), 0, NULL},
    {"_opened_at", T_OBJECT, offsetof(Gate, opened_at), 0, NULL},
    {"_fail_types", T_OBJECT_EX, offsetof(Gate, fail_types), 0, NULL},
    {"_open_until", T_DOUBLE, offsetof(Gate, open_until), 0, NULL},
    {"_gen", T_PYSSIZET, offsetof(Gate, gen), 0, NULL},
    {"_fast", T_PYSSIZET, offsetof(Gate, fast), 0, NULL},
    {"_thr1", T_PYSSIZET, offsetof(Gate, thr1), 0, NULL},
    {"_listen", T_OBJECT, offsetof(Gate, listen), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject GateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "circuitry._speedups.Gate",
    .tp_basicsize = sizeof(Gate),
    .tp_dealloc = (destructor)gate_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The lock-free front of a breaker (see circuitry/_fastpath.py for its contract).",
    .tp_traverse = (traverseproc)gate_traverse,
    .tp_clear = (inquiry)gate_clear,
    .tp_methods = gate_methods,
    .tp_members = gate_members,
    .tp_getset = gate_getset,
    .tp_init = (initproc)gate_init,
    .tp_new = PyType_GenericNew,
};

/* -- Ready: an awaitable that is already done ----------------------------------------------------- */

/* __aenter__/__aexit__ do no I/O, so they return this instead of a coroutine: awaiting it hands back
 * its value at once (am_send on 3.10/3.11, tp_iternext on later versions). */
typedef struct {
    PyObject_HEAD
    PyObject *value;
} Ready;

static PyTypeObject ReadyType;

static PyObject *
ready_new(PyObject *value)
{
    Ready *r = PyObject_New(Ready, &ReadyType);
    if (r == NULL) {
        return NULL;
    }
    r->value = Py_NewRef(value);
    return (PyObject *)r;
}

static void
ready_dealloc(Ready *r)
{
    Py_XDECREF(r->value);
    PyObject_Free(r);
}

static PyObject *
ready_await(PyObject *r)
{
    return Py_NewRef(r);
}

static PyObject *
ready_next(Ready *r)
{
    PyObject *value = r->value;
    if (value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited circuit entry");
        return NULL;
    }
    r->value = NULL;
    if (value != Py_None) {
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
        if (stop != NULL) {
            PyErr_SetObject(PyExc_StopIteration, stop);
            Py_DECREF(stop);
        }
    }
    Py_DECREF(value);
    return NULL;
}

static PySendResult
ready_send(Ready *r, PyObject *arg, PyObject **result)
{
    if (r->value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited circuit entry");
        *result = NULL;
        return PYGEN_ERROR;
    }
    *result = r->value;
    r->value = NULL;
    return PYGEN_RETURN;
}

static PyObject *
ready_send_method(Ready *r, PyObject *arg)
{
    return ready_next(r);
}

static PyObject *
ready_throw(Ready *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "throw expected at least 1 argument");
        return NULL;
    }
    Py_CLEAR(r->value);
    PyObject *typ = args[0];
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, nargs > 1 ? args[1] : NULL);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    }
    return NULL;
}

static PyObject *
ready_close(Ready *r, PyObject *unused)
{
    Py_CLEAR(r->value);
    Py_RETURN_NONE;
}

static PyMethodDef ready_methods[] = {
    {"send", (PyCFunction)ready_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))ready_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)ready_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods ready_as_async = {
    .am_await = ready_await,
    .am_send = (sendfunc)ready_send,
};

static PyTypeObject ReadyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "circuitry._speedups.Ready",
    .tp_basicsize = sizeof(Ready),
    .tp_dealloc = (destructor)ready_dealloc,
    .tp_as_async = &ready_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)ready_next,
    .tp_methods = ready_methods,
};

/* -- WithBase ---------------------------------------------------------------------------------- */

/* One `with` entry: the gate entered and its token, for __exit__. */
typedef struct Entry {
    PyObject *flow;       /* the context it was entered in (strong reference); NULL: a free slot */
    PyObject *b;          /* the gate */
    PyObject *token;      /* what the gate's enter() returned */
    struct Entry *outer;  /* the same flow's enclosing entry of this circuit (nesting; rare) */
} Entry;

/* Entries are kept per *flow*: the contextvars.Context the entering code runs in. Each thread runs
 * in its own context, and asyncio (like trio) runs each task in its own, so this is exactly what a
 * ContextVar would key on — the pure-Python faces use one — without a ContextVar's cost (a new HAMT
 * and a Token per set; two sets were half of a `with` block's instructions). A context is current
 * in one thread at a time (Context.run refuses a second), and an entry holds a reference to its
 * context, so the address cannot be reused while the entry lives.
 *
 * The table is open addressing with linear probing, keyed by the context's address; deletion shifts
 * back (no tombstones). It grows at half full and shrinks when a burst of concurrent entries has
 * drained, so 100,000 tasks inside one `async with` cost O(1) each and leave nothing behind. */
typedef struct {
    PyObject_HEAD
    PyObject *name;     /* the gate's name */
    PyObject *ref;      /* has `.breakers`: a dict of gates by name */
    Entry *slots;
    Py_ssize_t cap;     /* a power of two, or 0 before the first entry */
    Py_ssize_t used;    /* slots in use: flows with at least one entry */
    Py_ssize_t open;    /* entries, nested ones included */
    Py_ssize_t agen_open; /* entries keyed by an async generator's frame (see agen_frame) */
} WithBase;

#define MIN_CAP 8

static inline size_t
flow_hash(PyObject *flow, Py_ssize_t cap)
{
    return (size_t)(((uintptr_t)flow >> 4) * (uintptr_t)0x9E3779B97F4A7C15ULL >> 16) & (size_t)(cap - 1);
}

static Py_ssize_t
table_find(WithBase *self, PyObject *flow)
{
    if (self->cap == 0) {
        return -1;
    }
    size_t mask = (size_t)self->cap - 1;
    for (size_t i = flow_hash(flow, self->cap);; i = (i + 1) & mask) {
        PyObject *f = self->slots[i].flow;
        if (f == flow) {
            return (Py_ssize_t)i;
        }
        if (f == NULL) {
            return -1;
        }
    }
}

/* Moves every slot into a table of `cap` slots. No Python code runs. */
static int
table_resize(WithBase *self, Py_ssize_t cap)
{
    Entry *slots = PyMem_Calloc((size_t)cap, sizeof(Entry));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t mask = (size_t)cap - 1;
    for (Py_ssize_t j = 0; j < self->cap; j++) {
        Entry *e = &self->slots[j];
        if (e->flow == NULL) {
            continue;
        }
        size_t i = flow_hash(e->flow, cap);
        while (slots[i].flow != NULL) {
            i = (i + 1) & mask;
        }
        slots[i] = *e;
    }
    PyMem_Free(self->slots);
    self->slots = slots;
    self->cap = cap;
    return 0;
}

/* Records an entry; steals the references to b and token (on failure too). */
static int
table_push(WithBase *self, PyObject *flow, PyObject *b, PyObject *token)
{
    if ((self->used + 1) * 2 > self->cap) {
        if (table_resize(self, self->cap ? self->cap * 2 : MIN_CAP) < 0) {
            goto fail;
        }
    }
    size_t mask = (size_t)self->cap - 1;
    size_t i = flow_hash(flow, self->cap);
    while (self->slots[i].flow != NULL && self->slots[i].flow != flow) {
        i = (i + 1) & mask;
    }
    Entry *e = &self->slots[i];
    if (e->flow == flow) {  /* nested in an entry of the same flow: keep that one aside */
        Entry *outer = PyMem_Malloc(sizeof(Entry));
        if (outer == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        *outer = *e;
        e->outer = outer;
    }
    else {
        e->flow = Py_NewRef(flow);
        e->outer = NULL;
        self->used++;
    }
    e->b = b;
    e->token = token;
    self->open++;
    return 0;
fail:
    Py_DECREF(b);
    Py_DECREF(token);
    return -1;
}

/* Removes the innermost entry of `flow` into *out (the caller owns out->flow, b, token).
 * Returns 0, or -1 when the flow has no entry. No Python code runs. */
static int
table_pop(WithBase *self, PyObject *flow, Entry *out)
{
    Py_ssize_t found = table_find(self, flow);
    if (found < 0) {
        return -1;
    }
    Entry *e = &self->slots[found];
    *out = *e;
    out->outer = NULL;
    self->open--;
    if (e->outer != NULL) {  /* the enclosing entry becomes the innermost again */
        Entry *outer = e->outer;
        *e = *outer;
        PyMem_Free(outer);
        out->flow = Py_NewRef(flow);  /* the slot keeps its own reference */
        return 0;
    }
    /* delete, shifting back the entries of the same probe run */
    size_t mask = (size_t)self->cap - 1;
    size_t hole = (size_t)found;
    for (size_t j = (hole + 1) & mask; self->slots[j].flow != NULL; j = (j + 1) & mask) {
        size_t home = flow_hash(self->slots[j].flow, self->cap);
        /* move j into the hole unless its home lies cyclically in (hole, j] */
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            self->slots[hole] = self->slots[j];
            hole = j;
        }
    }
    memset(&self->slots[hole], 0, sizeof(Entry));
    self->used--;
    if (self->cap > MIN_CAP * 4 && self->used * 8 < self->cap) {
        Py_ssize_t cap = self->cap;
        while (cap > MIN_CAP && self->used * 4 < cap) {
            cap /= 2;
        }
        if (table_resize(self, cap) < 0) {
            PyErr_Clear();  /* keeping the larger table is harmless */
        }
    }
    return 0;
}

static void
entry_clear_refs(Entry *e)
{
    Py_CLEAR(e->flow);
    Py_CLEAR(e->b);
    Py_CLEAR(e->token);
}

static int
with_traverse(WithBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->ref);
    for (Py_ssize_t i = 0; i < self->cap; i++) {
        if (self->slots[i].flow == NULL) {
            continue;
        }
        Py_VISIT(self->slots[i].flow);  /* one reference per slot, shared by its nested entries */
        for (Entry *e = &self->slots[i]; e != NULL; e = e->outer) {
            Py_VISIT(e->b);
            Py_VISIT(e->token);
        }
    }
    return 0;
}

static int
with_clear(WithBase *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->ref);
    Entry *slots = self->slots;
    Py_ssize_t cap = self->cap;
    self->slots = NULL;
    self->cap = self->used = self->open = self->agen_open = 0;
    for (Py_ssize_t i = 0; i < cap; i++) {
        Entry *outer = slots[i].outer;
        if (slots[i].flow != NULL) {
            Py_CLEAR(slots[i].b);  /* the slot's flow reference is dropped below */
            Py_CLEAR(slots[i].token);
            Py_CLEAR(slots[i].flow);
        }
        while (outer != NULL) {
            Entry *next = outer->outer;
            outer->flow = NULL;  /* the nested entries share the slot's flow reference */
            entry_clear_refs(outer);
            PyMem_Free(outer);
            outer = next;
        }
    }
    PyMem_Free(slots);
    return 0;
}

static void
with_dealloc(WithBase *self)
{
    /* instances are of circuitry.Circuit, a heap subclass: its dealloc untracks the object and drops
     * the reference to the type after this returns */
    PyObject_GC_UnTrack(self);
    with_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
with_init(WithBase *self, PyObject *args, PyObject *kwds)
{
    PyObject *name, *ref;
    if (!PyArg_ParseTuple(args, "UO:WithBase", &name, &ref)) {
        return -1;
    }
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    Py_INCREF(ref);
    Py_XSETREF(self->ref, ref);
    return 0;
}

/* The current flow: this thread's or task's context (borrowed). */
static PyObject *
current_flow(void)
{
    PyThreadState *ts = PyThreadState_Get();
    if (ts->context == NULL) {  /* a thread that has not used contextvars yet: make its context now */
        PyObject *copy = PyContext_CopyCurrent();
        if (copy == NULL) {
            return NULL;
        }
        Py_DECREF(copy);
    }
    return ts->context;
}

static PyObject *
fields_missing(WithBase *self)
{
    PyErr_Format(PyExc_RuntimeError, "%R was not initialised", self);
    return NULL;
}

/* The frame of the code running `async with` when it is an async generator's (borrowed), else NULL.
 * asyncio closes an async generator its consumer abandoned (`break` out of `async for`) in a task of its
 * own, whose context is another: an entry keyed by the consumer's context was not found there, and the
 * probe it held stayed taken until probe_timeout (the entry, and the context it holds, for good). An
 * async generator's entries are keyed by its frame instead, which is the same wherever it runs. (Only
 * there: reading the frame makes CPython build its frame object, which a plain `with` should not pay.) */
static PyObject *
agen_frame(void)
{
    PyFrameObject *f = PyEval_GetFrame();  /* borrowed: the frame of the `async with` statement */
    if (f == NULL) {
        return NULL;
    }
    PyCodeObject *code = PyFrame_GetCode(f);
    int r = (code->co_flags & CO_ASYNC_GENERATOR) != 0;
    Py_DECREF(code);
    return r ? (PyObject *)f : NULL;
}

/* __enter__: the gate (new reference), after recording the entry. */
static PyObject *
with_enter_impl(WithBase *self, PyObject *agen)
{
    if (self->ref == NULL || self->name == NULL) {
        return fields_missing(self);
    }
    PyObject *gates = PyObject_GetAttr(self->ref, str_breakers);
    if (gates == NULL) {
        return NULL;
    }
    PyObject *g = PyDict_Check(gates) ? PyDict_GetItemWithError(gates, self->name) : NULL;
    Py_XINCREF(g);
    Py_DECREF(gates);
    if (g == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        g = PyObject_CallMethodNoArgs((PyObject *)self, str_create);
        if (g == NULL) {
            return NULL;
        }
    }
    PyObject *token = PyObject_TypeCheck(g, &GateType) ? gate_enter_impl((Gate *)g)
                                                        : PyObject_CallMethodNoArgs(g, str_enter);
    if (token == NULL) {
        Py_DECREF(g);
        return NULL;
    }
    PyObject *flow = agen != NULL ? agen : current_flow();
    if (flow != NULL && table_push(self, flow, Py_NewRef(g), Py_NewRef(token)) == 0) {
        self->agen_open += agen != NULL;
        Py_DECREF(token);
        return g;
    }
    /* the permit was taken: report it cancelled (giving back a probe) before raising the error */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *r = PyObject_CallMethodObjArgs(g, str_exit, token, value ? value : Py_None, NULL);
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
    Py_DECREF(token);
    Py_DECREF(g);
    return NULL;
}

/* __exit__: report the block's outcome to the gate of this flow's innermost entry. */
static int
with_exit_impl(WithBase *self, PyObject *exc, const char *method, PyObject *agen)
{
    Entry entry;
    int got = agen != NULL ? table_pop(self, agen, &entry) : -1;
    if (got == 0) {
        self->agen_open--;
    }
    PyObject *flow = got == 0 ? agen : current_flow();
    if (flow == NULL) {
        return -1;
    }
    if (got < 0 && table_pop(self, flow, &entry) < 0) {
        PyErr_Format(PyExc_RuntimeError, "%R: %s without a matching %s", self, method,
                     method[2] == 'a' ? "__aenter__" : "__enter__");
        return -1;
    }
    int rc;
    if (PyObject_TypeCheck(entry.b, &GateType)) {
        rc = gate_exit_impl((Gate *)entry.b, entry.token, exc, no_result);
    }
    else {
        PyObject *r = PyObject_CallMethodObjArgs(entry.b, str_exit, entry.token, exc, NULL);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    entry_clear_refs(&entry);
    return rc;
}

static PyObject *
with_enter(WithBase *self, PyObject *unused)
{
    return with_enter_impl(self, NULL);
}

static PyObject *
with_exit(WithBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__exit__ expected 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (with_exit_impl(self, args[1], "__exit__", NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
with_aenter(WithBase *self, PyObject *unused)
{
    PyObject *g = with_enter_impl(self, agen_frame());
    if (g == NULL) {
        return NULL;
    }
    PyObject *r = ready_new(g);
    Py_DECREF(g);
    return r;
}

static PyObject *
with_aexit(WithBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__aexit__ expected 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (with_exit_impl(self, args[1], "__aexit__", self->agen_open > 0 ? agen_frame() : NULL) < 0) {
        return NULL;
    }
    return ready_new(Py_None);
}

static PyMethodDef with_methods[] = {
    {"__enter__", (PyCFunction)with_enter, METH_NOARGS, "Enter: take a permit or raise the gate's refusal."},
    {"__exit__", (PyCFunction)(void (*)(void))with_exit, METH_FASTCALL, "Report the block's outcome."},
    {"__aenter__", (PyCFunction)with_aenter, METH_NOARGS, "Enter (async)."},
    {"__aexit__", (PyCFunction)(void (*)(void))with_aexit, METH_FASTCALL, "Report the block's outcome (async)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
with_get_open(WithBase *self, void *unused)
{
    return PyLong_FromSsize_t(self->open);
}

static PyObject *
with_get_capacity(WithBase *self, void *unused)
{
    return PyLong_FromSsize_t(self->cap);
}

static PyGetSetDef with_getset[] = {
    {"_open_entries", (getter)with_get_open, NULL, "Entries not exited yet, nested ones included.", NULL},
    {"_table_capacity", (getter)with_get_capacity, NULL, "Slots in the entry table.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef with_members[] = {
    {"name", T_OBJECT_EX, offsetof(WithBase, name), READONLY, "The gate's name."},
    {"_ref", T_OBJECT_EX, offsetof(WithBase, ref), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WithBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "circuitry._speedups.WithBase",
    .tp_basicsize = sizeof(WithBase),
    .tp_dealloc = (destructor)with_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "`with` and `async with` over a named gate (see circuitry/_fastpath.py for its contract).",
    .tp_traverse = (traverseproc)with_traverse,
    .tp_clear = (inquiry)with_clear,
    .tp_methods = with_methods,
    .tp_members = with_members,
    .tp_getset = with_getset,
    .tp_init = (initproc)with_init,
    .tp_new = PyType_GenericNew,
};

/* -- SyncWrapper: what the decorator returns for a plain function ----------------------------------- */

/* The same steps as circuitry/_fastpath.py's protect() closure: find the gate by name, enter, call,
 * exit. As a C callable it adds no Python frame: an exception from the function passes through without
 * a frame object and a traceback entry of its own, which were most of a counted failure's overhead. A
 * TypeError that reaches here with no traceback was raised by the call itself (arguments the function
 * does not take) before any frame of it ran: the service was never called, so the call is ignored. */
typedef struct {
    PyObject_HEAD
    PyObject *ref;     /* has `.breakers`: a dict of gates by name */
    PyObject *name;
    PyObject *create;  /* makes the gate when the name is missing */
    PyObject *fn;      /* the protected function */
    PyObject *dict;    /* __dict__: what functools.update_wrapper copies, and `circuit` */
    vectorcallfunc vectorcall;
} SyncWrapper;

static PyTypeObject SyncWrapperType;

/* The gate called `name` (new reference). */
static PyObject *
lookup_gate(PyObject *ref, PyObject *name, PyObject *create)
{
    PyObject *gates = PyObject_GetAttr(ref, str_breakers);
    if (gates == NULL) {
        return NULL;
    }
    PyObject *g = PyDict_Check(gates) ? PyDict_GetItemWithError(gates, name) : NULL;
    Py_XINCREF(g);
    Py_DECREF(gates);
    if (g == NULL && !PyErr_Occurred()) {
        g = PyObject_CallNoArgs(create);
    }
    return g;
}

static int
report(PyObject *g, PyObject *token, PyObject *exc, PyObject *result)
{
    if (PyObject_TypeCheck(g, &GateType)) {
        return gate_exit_impl((Gate *)g, token, exc, result);
    }
    PyObject *r = PyObject_CallMethodObjArgs(g, str_exit, token, exc, result, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *
sw_vectorcall(SyncWrapper *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *g = lookup_gate(self->ref, self->name, self->create);
    if (g == NULL) {
        return NULL;
    }
    PyObject *token = PyObject_TypeCheck(g, &GateType) ? gate_enter_impl((Gate *)g)
                                                        : PyObject_CallMethodNoArgs(g, str_enter);
    if (token == NULL) {
        Py_DECREF(g);
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    if (result != NULL) {
        if (report(g, token, Py_None, result) < 0) {
            Py_CLEAR(result);
        }
    }
    else {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL) {
            PyException_SetTraceback(value, tb);
        }
        int rc;
        if (value != NULL && Py_IS_TYPE(value, (PyTypeObject *)PyExc_TypeError) && tb == NULL) {
            PyObject *r = PyObject_CallMethodOneArg(g, str_record_ignored, token);  /* never started */
            Py_XDECREF(r);
            rc = r == NULL ? -1 : 0;
        }
        else {
            rc = report(g, token, value ? value : Py_None, no_result);
        }
        if (rc < 0) {  /* reporting failed: that error replaces the call's, as in the Python wrapper */
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        else {
            PyErr_Restore(type, value, tb);
        }
    }
    Py_DECREF(token);
    Py_DECREF(g);
    return result;
}

static PyObject *
sw_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *ref, *name, *create, *fn;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "protect() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "protect", 4, 4, &ref, &name, &create, &fn)) {
        return NULL;
    }
    SyncWrapper *self = (SyncWrapper *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->ref = Py_NewRef(ref);
    self->name = Py_NewRef(name);
    self->create = Py_NewRef(create);
    self->fn = Py_NewRef(fn);
    self->vectorcall = (vectorcallfunc)sw_vectorcall;
    return (PyObject *)self;
}

static int
sw_traverse(SyncWrapper *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ref);
    Py_VISIT(self->name);
    Py_VISIT(self->create);
    Py_VISIT(self->fn);
    Py_VISIT(self->dict);
    return 0;
}

static int
sw_clear(SyncWrapper *self)
{
    Py_CLEAR(self->ref);
    Py_CLEAR(self->name);
    Py_CLEAR(self->create);
    Py_CLEAR(self->fn);
    Py_CLEAR(self->dict);
    return 0;
}

static void
sw_dealloc(SyncWrapper *self)
{
    PyObject_GC_UnTrack(self);
    sw_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A function is a descriptor: looked up on an instance, it binds as a method. */
static PyObject *
sw_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

/* Pickled (and copied) by reference, as a function is: its module attribute is this object. */
static PyObject *
sw_reduce(SyncWrapper *self, PyObject *unused)
{
    PyObject *qualname = self->dict ? PyDict_GetItemWithError(self->dict, str_qualname) : NULL;
    if (qualname == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "cannot pickle a protected function without __qualname__");
        }
        return NULL;
    }
    return Py_NewRef(qualname);
}

static PyObject *
sw_repr(SyncWrapper *self)
{
    return PyUnicode_FromFormat("<protected %R>", self->fn);
}

static PyMethodDef sw_methods[] = {
    {"__reduce__", (PyCFunction)sw_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sw_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SyncWrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "circuitry._speedups.protect",
    .tp_basicsize = sizeof(SyncWrapper),
    .tp_dealloc = (destructor)sw_dealloc,
    .tp_vectorcall_offset = offsetof(SyncWrapper, vectorcall),
    .tp_repr = (reprfunc)sw_repr,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "protect(ref, name, create, fn): fn, called through the gate named name (see circuitry/_fastpath.py).",
    .tp_traverse = (traverseproc)sw_traverse,
    .tp_clear = (inquiry)sw_clear,
    .tp_methods = sw_methods,
    .tp_getset = sw_getset,
    .tp_descr_get = sw_get,
    .tp_dictoffset = offsetof(SyncWrapper, dict),
    .tp_new = sw_new,
};

/* -- NO_RESULT ------------------------------------------------------------------------------------- */

static PyObject *
noresult_repr(PyObject *self)
{
    return PyUnicode_FromString("NO_RESULT");
}

static PyTypeObject NoResultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "circuitry._speedups.NoResultType",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_repr = noresult_repr,
};

/* -- module ------------------------------------------------------------------------------------- */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "circuitry._speedups",
    .m_doc = "C twins of circuitry/_fastpath.py's Gate and WithBase (optional; see circuitry/_accel.py).",
    .m_size = -1,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

static int
add_type(PyObject *m, const char *name, PyTypeObject *type)
{
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    INTERN(str_breakers, "breakers");
    INTERN(str_create, "_create");
    INTERN(str_enter, "enter");
    INTERN(str_exit, "exit");
    INTERN(str_enter_slow, "_enter_slow");
    INTERN(str_exit_slow, "_exit_slow");
    INTERN(str_trip, "_trip");
    INTERN(str_append, "append");
    INTERN(str_open, "open");
    INTERN(str_record_ignored, "record_ignored");
    INTERN(str_qualname, "__qualname__");
    if (PyType_Ready(&ReadyType) < 0 || PyType_Ready(&GateType) < 0 || PyType_Ready(&WithBaseType) < 0
        || PyType_Ready(&NoResultType) < 0 || PyType_Ready(&SyncWrapperType) < 0) {
        return NULL;
    }
    no_result = PyObject_New(PyObject, &NoResultType);
    if (no_result == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    if (add_type(m, "Gate", &GateType) < 0 || add_type(m, "WithBase", &WithBaseType) < 0
        || add_type(m, "protect", &SyncWrapperType) < 0
        || PyModule_AddObject(m, "NO_RESULT", Py_NewRef(no_result)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
