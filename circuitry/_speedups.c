/* circuitry._speedups: the hot paths of circuitry's faces, in C.
 *
 * Optional. circuitry/_faces.py holds the same logic in Python and uses it when this
 * module is missing (no compiler at install time) or CIRCUITRY_NO_SPEEDUPS is set. Nothing here
 * decides anything the Python breaker does not: these functions read the breaker's slots on the
 * paths where the Python faces read them, and call the breaker's own methods everywhere else.
 *
 *   WithBase   the base class of circuitry.Circuit: __enter__/__exit__, __aenter__/__aexit__.
 *              In Python a `with` block costs two Python frames and two ContextVar.set calls (a
 *              new HAMT node and a Token each); here, two C calls and a lookup in a small table
 *              per circuit keyed by the running context (see Entry below).
 *   reject     the decorator's refusal of an open circuit: count it, raise CircuitOpenError.
 *   failed     the decorator's inline count of a failure (the `except` block of the hot path).
 *
 * bind(CircuitBreaker, CircuitOpenError) must run once before use: it records where the breaker's
 * __slots__ live, so a read is a pointer load, not an attribute lookup.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* -- the breaker's slots ---------------------------------------------------------------------------- */

static PyTypeObject *breaker_type = NULL;
static PyObject *open_error = NULL;

static Py_ssize_t off_name, off_fast, off_gen, off_timed, off_now, off_n_ok, off_n_rej, off_n_fail, off_dirty,
    off_consec, off_thr1, off_fail_types, off_open_until, off_opened_at;

static PyObject *str_breakers, *str_create, *str_acquire_slow, *str_record_success, *str_on_error,
    *str_release, *str_clear_consecutive, *str_trip_fast, *str_open;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static int
slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name);  /* borrowed */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member", type->tp_name, name);
        return -1;
    }
    *out = ((PyMemberDescrObject *)descr)->d_member->offset;
    return 0;
}

/* A slot's value, or NULL with AttributeError when it was never assigned. */
static inline PyObject *
slot(PyObject *b, Py_ssize_t off, const char *name)
{
    PyObject *v = SLOT(b, off);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "breaker has no %s", name);
    }
    return v;
}

/* next(counter) for an itertools.count slot. */
static inline int
tick(PyObject *b, Py_ssize_t off)
{
    PyObject *counter = SLOT(b, off);
    if (counter == NULL) {
        PyErr_SetString(PyExc_AttributeError, "breaker counter missing");
        return -1;
    }
    PyObject *v = Py_TYPE(counter)->tp_iternext(counter);
    if (v == NULL) {
        return -1;
    }
    Py_DECREF(v);
    return 0;
}

/* Calls the breaker's clock, holding a reference: the slot's may be its only one. */
static inline PyObject *
call_clock(PyObject *nowf)
{
    Py_INCREF(nowf);
    PyObject *now = PyObject_CallNoArgs(nowf);
    Py_DECREF(nowf);
    return now;
}

/* The generation when `v` is a non-negative int (the lock-free closed path), else -1. */
static inline long
generation(PyObject *v)
{
    if (!PyLong_CheckExact(v)) {
        return -1;
    }
    long g = PyLong_AsLong(v);
    if (g == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return g < 0 ? -1 : g;
}

static PyObject *
bind(PyObject *module, PyObject *args)
{
    PyObject *type, *err;
    if (!PyArg_ParseTuple(args, "O!O!:bind", &PyType_Type, &type, &PyType_Type, &err)) {
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)type;
    if (slot_offset(t, "name", &off_name) < 0 || slot_offset(t, "_fast", &off_fast) < 0 || slot_offset(t, "_gen", &off_gen) < 0
        || slot_offset(t, "_timed", &off_timed) < 0 || slot_offset(t, "_now", &off_now) < 0
        || slot_offset(t, "_n_ok", &off_n_ok) < 0 || slot_offset(t, "_n_rej", &off_n_rej) < 0
        || slot_offset(t, "_n_fail", &off_n_fail) < 0 || slot_offset(t, "_dirty", &off_dirty) < 0
        || slot_offset(t, "_consec", &off_consec) < 0 || slot_offset(t, "_thr1", &off_thr1) < 0
        || slot_offset(t, "_fail_types", &off_fail_types) < 0
        || slot_offset(t, "_open_until", &off_open_until) < 0
        || slot_offset(t, "_opened_at", &off_opened_at) < 0) {
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(breaker_type, t);
    Py_INCREF(err);
    Py_XSETREF(open_error, err);
    Py_RETURN_NONE;
}

static int
check_bound(PyObject *b)
{
    if (breaker_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "circuitry._speedups.bind() was not called");
        return -1;
    }
    if (!PyObject_TypeCheck(b, breaker_type)) {
        PyErr_Format(PyExc_TypeError, "expected a CircuitBreaker, got %R", b);
        return -1;
    }
    return 0;
}

/* -- reject(breaker): the decorator's refusal while open ----------------------------------------- */

/* Called by the faces when `_fast` is -2 (open, enforcing, no rejection hooks). Raises
 * CircuitOpenError when the open period still runs; returns None when it has ended (the caller then
 * takes the general path, which moves the circuit to half-open). */
static PyObject *
reject(PyObject *module, PyObject *b)
{
    if (check_bound(b) < 0) {
        return NULL;
    }
    PyObject *nowf = slot(b, off_now, "_now");
    PyObject *until = nowf ? slot(b, off_open_until, "_open_until") : NULL;
    PyObject *opened = until ? slot(b, off_opened_at, "_opened_at") : NULL;
    if (opened == NULL) {
        return NULL;
    }
    Py_INCREF(until);
    Py_INCREF(opened);
    PyObject *now = call_clock(nowf);
    PyObject *result = NULL;
    if (now == NULL) {
        goto done;
    }
    double n = PyFloat_AsDouble(now), u = PyFloat_AsDouble(until);
    Py_DECREF(now);
    if ((n == -1.0 || u == -1.0) && PyErr_Occurred()) {
        goto done;
    }
    if (!(n < u)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (tick(b, off_n_rej) < 0) {
        goto done;
    }
    PyObject *name = slot(b, off_name, "name");
    if (name == NULL) {
        goto done;
    }
    Py_INCREF(name);
    PyObject *retry = PyFloat_FromDouble(u - n);
    if (retry != NULL) {
        PyObject *err = PyObject_CallFunctionObjArgs(open_error, name, str_open, opened, retry, NULL);
        if (err != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(err), err);
            Py_DECREF(err);
        }
        Py_DECREF(retry);
    }
    Py_DECREF(name);
done:
    Py_DECREF(until);
    Py_DECREF(opened);
    return result;
}

/* -- failed(breaker, token, exc): the decorator's inline count of a failure ---------------------- */

/* Mirrors the `except Exception` block of Circuit._wrap_sync: count the failure inline when the
 * exception is one of `_fail_types` and the generation is still `token`'s, tripping the circuit at
 * the threshold; hand anything else to the breaker's general `_on_error`. */
static PyObject *
failed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "failed(breaker, token, exc)");
        return NULL;
    }
    PyObject *b = args[0], *token = args[1], *exc = args[2];
    if (check_bound(b) < 0) {
        return NULL;
    }
    PyObject *consec = slot(b, off_consec, "_consec");
    PyObject *types = consec ? slot(b, off_fail_types, "_fail_types") : NULL;
    if (types == NULL) {
        return NULL;
    }
    /* the counter is read before the generation, as in the Python face */
    Py_INCREF(consec);
    int inline_count = 0;
    if (PyTuple_CheckExact(types) && PyTuple_GET_SIZE(types) == 0) {
        inline_count = 0;
    }
    else {
        Py_INCREF(types);  /* isinstance may run Python code (__instancecheck__), which may replace it */
        int match = PyObject_IsInstance(exc, types);
        Py_DECREF(types);
        if (match < 0) {
            Py_DECREF(consec);
            return NULL;
        }
        long t = generation(token);
        PyObject *gen = SLOT(b, off_gen);  /* read after isinstance, which may run Python code */
        inline_count = match && t >= 0 && gen != NULL && t == generation(gen);
    }
    if (!inline_count) {
        Py_DECREF(consec);
        return PyObject_CallMethodObjArgs(b, str_on_error, token, exc, NULL);
    }
    if (tick(b, off_n_fail) < 0) {
        Py_DECREF(consec);
        return NULL;
    }
    PyObject *old = SLOT(b, off_dirty);
    SLOT(b, off_dirty) = Py_NewRef(Py_True);
    Py_XDECREF(old);
    PyObject *n = Py_TYPE(consec)->tp_iternext(consec);
    Py_DECREF(consec);
    if (n == NULL) {
        return NULL;
    }
    PyObject *thr1 = slot(b, off_thr1, "_thr1");
    if (thr1 == NULL) {
        Py_DECREF(n);
        return NULL;
    }
    int reached = PyObject_RichCompareBool(n, thr1, Py_GE);
    Py_DECREF(n);
    if (reached < 0) {
        return NULL;
    }
    if (reached) {
        return PyObject_CallMethodObjArgs(b, str_trip_fast, token, exc, NULL);
    }
    Py_RETURN_NONE;
}

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

/* One `with` entry: what __exit__ needs to report the block's outcome. */
typedef struct Entry {
    PyObject *flow;       /* the context it was entered in (strong reference); NULL: a free slot */
    PyObject *b;          /* the breaker */
    PyObject *token;      /* the generation (lock-free closed path) or the breaker's Permit */
    PyObject *t0;         /* start time for timed breakers, else None */
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
    PyObject *name;     /* the breaker's name */
    PyObject *ref;      /* a Registry, or the default registry's ref: has `.breakers` */
    Entry *slots;
    Py_ssize_t cap;     /* a power of two, or 0 before the first entry */
    Py_ssize_t used;    /* slots in use: flows with at least one entry */
    Py_ssize_t open;    /* entries, nested ones included */
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

/* Records an entry; steals the references to b, token and t0 (on failure too). */
static int
table_push(WithBase *self, PyObject *flow, PyObject *b, PyObject *token, PyObject *t0)
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
    e->t0 = t0;
    self->open++;
    return 0;
fail:
    Py_DECREF(b);
    Py_DECREF(token);
    Py_DECREF(t0);
    return -1;
}

/* Removes the innermost entry of `flow` into *out (the caller owns out->flow, b, token, t0).
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
    Py_CLEAR(e->t0);
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
            Py_VISIT(e->t0);
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
    self->cap = self->used = self->open = 0;
    for (Py_ssize_t i = 0; i < cap; i++) {
        Entry *outer = slots[i].outer;
        if (slots[i].flow != NULL) {
            Py_CLEAR(slots[i].b);  /* the slot's flow reference is dropped below */
            Py_CLEAR(slots[i].token);
            Py_CLEAR(slots[i].t0);
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

/* __enter__: the breaker (new reference), after recording the entry. */
static PyObject *
with_enter_impl(WithBase *self)
{
    if (self->ref == NULL || self->name == NULL) {
        return fields_missing(self);
    }
    PyObject *breakers = PyObject_GetAttr(self->ref, str_breakers);
    if (breakers == NULL) {
        return NULL;
    }
    PyObject *b = PyDict_Check(breakers) ? PyDict_GetItemWithError(breakers, self->name) : NULL;
    Py_XINCREF(b);
    Py_DECREF(breakers);
    if (b == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        b = PyObject_CallMethodNoArgs((PyObject *)self, str_create);
        if (b == NULL) {
            return NULL;
        }
    }
    if (check_bound(b) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    PyObject *token = slot(b, off_fast, "_fast");
    if (token == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    if (generation(token) >= 0) {
        Py_INCREF(token);
    }
    else {
        token = PyObject_CallMethodNoArgs(b, str_acquire_slow);
        if (token == NULL) {
            Py_DECREF(b);
            return NULL;
        }
    }
    PyObject *t0 = Py_None;
    if (SLOT(b, off_timed) == Py_True) {
        PyObject *nowf = slot(b, off_now, "_now");
        t0 = nowf ? call_clock(nowf) : NULL;
    }
    else {
        Py_INCREF(t0);
    }
    PyObject *flow = t0 ? current_flow() : NULL;
    if (flow != NULL && table_push(self, flow, Py_NewRef(b), Py_NewRef(token), Py_NewRef(t0)) == 0) {
        Py_DECREF(token);
        Py_DECREF(t0);
        return b;
    }
    /* the permit was taken: give it back before reporting the error */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_CallMethodOneArg(b, str_release, token);
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
    Py_DECREF(token);
    Py_XDECREF(t0);
    Py_DECREF(b);
    return NULL;
}

/* __exit__: report the block's outcome to the breaker of this flow's innermost entry. */
static int
with_exit_impl(WithBase *self, PyObject *exc, const char *method)
{
    PyObject *flow = current_flow();
    if (flow == NULL) {
        return -1;
    }
    Entry entry;
    if (table_pop(self, flow, &entry) < 0) {
        PyErr_Format(PyExc_RuntimeError, "%R: %s without a matching %s", self, method,
                     method[2] == 'a' ? "__aenter__" : "__enter__");
        return -1;
    }
    PyObject *b = entry.b, *token = entry.token, *t0 = entry.t0;
    PyObject *r = NULL;
    PyObject *duration = NULL;
    if (t0 != Py_None) {
        PyObject *nowf = slot(b, off_now, "_now");
        PyObject *now = nowf ? call_clock(nowf) : NULL;
        if (now == NULL) {
            goto done;
        }
        duration = PyNumber_Subtract(now, t0);
        Py_DECREF(now);
        if (duration == NULL) {
            goto done;
        }
    }
    if (exc == Py_None) {
        long t = generation(token);
        PyObject *fast = SLOT(b, off_fast);
        if (t >= 0 && fast != NULL && t == generation(fast)) {  /* closed, lock-free, same generation */
            if (tick(b, off_n_ok) < 0) {
                goto done;
            }
            if (SLOT(b, off_dirty) == Py_True) {
                r = PyObject_CallMethodOneArg(b, str_clear_consecutive, token);
            }
            else {
                r = Py_NewRef(Py_None);
            }
        }
        else {
            r = PyObject_CallMethodObjArgs(b, str_record_success, token, duration ? duration : Py_None, NULL);
        }
    }
    else if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_Exception)) {
        r = PyObject_CallMethodObjArgs(b, str_on_error, token, exc, duration ? duration : Py_None, NULL);
    }
    else {
        r = PyObject_CallMethodOneArg(b, str_release, token);
    }
done:
    Py_XDECREF(duration);
    entry_clear_refs(&entry);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *
with_enter(WithBase *self, PyObject *unused)
{
    return with_enter_impl(self);
}

static PyObject *
with_exit(WithBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__exit__ expected 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (with_exit_impl(self, args[1], "__exit__") < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
with_aenter(WithBase *self, PyObject *unused)
{
    PyObject *b = with_enter_impl(self);
    if (b == NULL) {
        return NULL;
    }
    PyObject *r = ready_new(b);
    Py_DECREF(b);
    return r;
}

static PyObject *
with_aexit(WithBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__aexit__ expected 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (with_exit_impl(self, args[1], "__aexit__") < 0) {
        return NULL;
    }
    return ready_new(Py_None);
}

static PyMethodDef with_methods[] = {
    {"__enter__", (PyCFunction)with_enter, METH_NOARGS, "Enter the circuit: take a permit or raise CircuitOpenError."},
    {"__exit__", (PyCFunction)(void (*)(void))with_exit, METH_FASTCALL, "Report the block's outcome."},
    {"__aenter__", (PyCFunction)with_aenter, METH_NOARGS, "Enter the circuit (async)."},
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
    {"name", T_OBJECT_EX, offsetof(WithBase, name), READONLY, "The breaker's name."},
    {"_ref", T_OBJECT_EX, offsetof(WithBase, ref), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WithBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "circuitry._speedups.WithBase",
    .tp_basicsize = sizeof(WithBase),
    .tp_dealloc = (destructor)with_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The `with` and `async with` methods of circuitry.Circuit.",
    .tp_traverse = (traverseproc)with_traverse,
    .tp_clear = (inquiry)with_clear,
    .tp_methods = with_methods,
    .tp_members = with_members,
    .tp_getset = with_getset,
    .tp_init = (initproc)with_init,
    .tp_new = PyType_GenericNew,
};

/* -- module ------------------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"bind", bind, METH_VARARGS, "bind(CircuitBreaker, CircuitOpenError): record the breaker's slot layout."},
    {"reject", reject, METH_O, "reject(breaker): raise CircuitOpenError while the open period runs."},
    {"failed", (PyCFunction)(void (*)(void))failed, METH_FASTCALL, "failed(breaker, token, exc): count a failure."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "circuitry._speedups",
    .m_doc = "C versions of circuitry's hot paths (optional; circuitry/_faces.py has the same in Python).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC
PyInit__speedups(void)
{
    INTERN(str_breakers, "breakers");
    INTERN(str_create, "_create");
    INTERN(str_acquire_slow, "_acquire_slow");
    INTERN(str_record_success, "record_success");
    INTERN(str_on_error, "_on_error");
    INTERN(str_release, "release");
    INTERN(str_clear_consecutive, "_clear_consecutive");
    INTERN(str_trip_fast, "_trip_fast");
    INTERN(str_open, "open");
    if (PyType_Ready(&ReadyType) < 0 || PyType_Ready(&WithBaseType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&WithBaseType);
    if (PyModule_AddObject(m, "WithBase", (PyObject *)&WithBaseType) < 0) {
        Py_DECREF(&WithBaseType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
