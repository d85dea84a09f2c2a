/* streams._fastpath: the worker's per-event and per-entry work, compiled (pure; no Kafka, no I/O).

Owns these functions, each the compiled twin of Python code that tests hold it to:

- scan_plain_envelope(value, lower_ts_ms, upper_ts_ms): the events of an envelope whose every event is plain
  (keys item_id, ts and optionally user_id, event_type; strings without escapes; ts a JSON integer in range),
  as (item_ids, ts_ms, newest); None for anything else, which `streams.events.decode_message` then
  reads in full and gives the reasons for. It never accepts what decode_message rejects: when in doubt, None.
- count_by_partition(item_ids, ts_ms, slot_ms, n_partitions): the events counted per (item, slot) and
  split by the item's partition, {target: (items, slots, counts)}, each target's entries in order of first
  appearance (what Counter + PartitionCache.many + a per-target loop made in Python, in the same order); None for
  an envelope spanning more than 16 slots, which Python counts.
- murmur2_partition(key, n_partitions): Kafka's Java-client partitioner (murmur2, positive, mod n).
- int_column_within / str_column_within: stage 2's checks of a deltas message's columns, one pass each (what
  builtins over each column did in Python, ~10x slower).

Every failure path returns None or raises; no input makes it read outside the buffer it was given.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- murmur2, as Kafka's Java clients (and librdkafka's murmur2_random) compute it ---------------------- */

static uint32_t murmur2(const unsigned char *data, Py_ssize_t length) {
    const uint32_t m = 0x5bd1e995u;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    Py_ssize_t n4 = length / 4;
    for (Py_ssize_t i = 0; i < n4; i++) {
        const unsigned char *d = data + 4 * i;
        uint32_t k = (uint32_t)d[0] | ((uint32_t)d[1] << 8) | ((uint32_t)d[2] << 16) | ((uint32_t)d[3] << 24);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + 4 * n4;
    switch (length % 4) {
    case 3: h ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1: h ^= (uint32_t)tail[0]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

static long partition_of_utf8(const char *data, Py_ssize_t length, long n_partitions) {
    return (long)((murmur2((const unsigned char *)data, length) & 0x7fffffffu) % (uint32_t)n_partitions);
}

static PyObject *murmur2_partition(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "murmur2_partition(key: bytes, n_partitions: int)");
        return NULL;
    }
    long n = PyLong_AsLong(args[1]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "n_partitions must be in [1, 2^31)");
        return NULL;
    }
    return PyLong_FromLong(partition_of_utf8(PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), n));
}

/* ---- the plain-envelope scanner ------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static inline int take_char(Cursor *c, unsigned char ch) {
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string without escapes, control characters or DEL: its bytes between the quotes, and whether all are ASCII. */
static int scan_string(Cursor *c, const char **start, Py_ssize_t *length, int *ascii) {
    if (!take_char(c, '"')) return 0;
    const unsigned char *s = c->p;
    unsigned char high = 0;
    while (c->p < c->end) {
        unsigned char ch = *c->p;
        if (ch == '"') {
            *start = (const char *)s;
            *length = c->p - s;
            *ascii = !(high & 0x80);
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20 || ch == 0x7f) return 0;
        high |= ch;
        c->p++;
    }
    return 0;
}

/* A JSON integer of at most 18 digits (no fraction, no exponent, no leading zero). */
static int scan_int(Cursor *c, long long *out) {
    int negative = take_char(c, '-');
    const unsigned char *digits = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    Py_ssize_t n = c->p - digits;
    if (n == 0 || n > 18 || (n > 1 && digits[0] == '0')) return 0;
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')) return 0;
    long long value = 0;
    for (Py_ssize_t i = 0; i < n; i++) value = value * 10 + (digits[i] - '0');
    *out = negative ? -value : value;
    return 1;
}

/* A str of valid UTF-8 whose length in code points is in [1, max_chars]; NULL (no error set) otherwise. */
static PyObject *checked_str(const char *start, Py_ssize_t length, int ascii, Py_ssize_t max_chars) {
    if (length < 1 || length > 4 * max_chars) return NULL;
    if (ascii) {   /* one byte per character, nothing to validate */
        if (length > max_chars) return NULL;
        PyObject *text = PyUnicode_New(length, 127);
        if (text == NULL) {
            PyErr_Clear();
            return NULL;
        }
        memcpy(PyUnicode_1BYTE_DATA(text), start, (size_t)length);
        return text;
    }
    PyObject *text = PyUnicode_DecodeUTF8(start, length, "strict");
    if (text == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_ssize_t chars = PyUnicode_GET_LENGTH(text);
    if (chars < 1 || chars > max_chars) {
        Py_DECREF(text);
        return NULL;
    }
    return text;
}

/* checked_str without keeping the str: an ASCII string needs no object to be checked. */
static int valid_str(const char *start, Py_ssize_t length, int ascii, Py_ssize_t max_chars) {
    if (ascii) return length >= 1 && length <= max_chars;
    PyObject *text = checked_str(start, length, 0, max_chars);
    Py_XDECREF(text);
    return text != NULL;
}

enum { KEY_ITEM_ID = 1, KEY_TS = 2, KEY_USER_ID = 4, KEY_EVENT_TYPE = 8 };

static int key_of(const char *start, Py_ssize_t length) {
    if (length == 7 && memcmp(start, "item_id", 7) == 0) return KEY_ITEM_ID;
    if (length == 2 && memcmp(start, "ts", 2) == 0) return KEY_TS;
    if (length == 7 && memcmp(start, "user_id", 7) == 0) return KEY_USER_ID;
    if (length == 10 && memcmp(start, "event_type", 10) == 0) return KEY_EVENT_TYPE;
    return 0;
}

/* One plain event; 1 with a new reference in *item_id, 0 (nothing held) for anything else. */
static int scan_event(Cursor *c, long long lower, long long upper, PyObject **item_id, long long *ts) {
    int seen = 0;
    PyObject *item = NULL;
    if (!take_char(c, '{')) return 0;
    for (;;) {
        const char *key_start, *value_start;
        Py_ssize_t key_length, value_length;
        int ascii;
        skip_ws(c);
        if (!scan_string(c, &key_start, &key_length, &ascii)) goto fail;
        int key = key_of(key_start, key_length);
        if (key == 0 || (seen & key)) goto fail;   /* another key, or one repeated: the full check decides */
        seen |= key;
        skip_ws(c);
        if (!take_char(c, ':')) goto fail;
        skip_ws(c);
        if (key == KEY_TS) {
            if (!scan_int(c, ts) || *ts < lower || *ts > upper) goto fail;
        } else {
            if (!scan_string(c, &value_start, &value_length, &ascii)) goto fail;
            if (key == KEY_ITEM_ID) {
                item = checked_str(value_start, value_length, ascii, 256);
                if (item == NULL) goto fail;
            } else if (!valid_str(value_start, value_length, ascii, key == KEY_EVENT_TYPE ? 64 : 256)) {
                goto fail;
            }
        }
        skip_ws(c);
        if (take_char(c, ',')) continue;
        if (take_char(c, '}')) break;
        goto fail;
    }
    if ((seen & (KEY_ITEM_ID | KEY_TS)) != (KEY_ITEM_ID | KEY_TS)) goto fail;
    *item_id = item;
    return 1;
fail:
    Py_XDECREF(item);
    return 0;
}

static PyObject *scan_plain_envelope(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_plain_envelope(value, lower_ts_ms, upper_ts_ms)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) Py_RETURN_NONE;
    long long lower = PyLong_AsLongLong(args[1]);
    if (lower == -1 && PyErr_Occurred()) return NULL;
    long long upper = PyLong_AsLongLong(args[2]);
    if (upper == -1 && PyErr_Occurred()) return NULL;
    Cursor c = {(const unsigned char *)PyBytes_AS_STRING(args[0]),
                (const unsigned char *)PyBytes_AS_STRING(args[0]) + PyBytes_GET_SIZE(args[0])};
    PyObject *items = PyList_New(0), *stamps = PyList_New(0);
    if (items == NULL || stamps == NULL) goto error;
    long long newest = 0;
    skip_ws(&c);
    if (!take_char(&c, '[')) goto none;
    for (;;) {
        PyObject *item = NULL;
        long long ts = 0;
        skip_ws(&c);
        if (!scan_event(&c, lower, upper, &item, &ts)) goto none;
        int failed = PyList_Append(items, item);
        Py_DECREF(item);
        if (failed) goto error;
        PyObject *stamp = PyLong_FromLongLong(ts);
        if (stamp == NULL) goto error;
        failed = PyList_Append(stamps, stamp);
        Py_DECREF(stamp);
        if (failed) goto error;
        if (PyList_GET_SIZE(stamps) == 1 || ts > newest) newest = ts;
        skip_ws(&c);
        if (take_char(&c, ',')) continue;
        if (take_char(&c, ']')) break;
        goto none;
    }
    skip_ws(&c);
    if (c.p != c.end) goto none;
    return Py_BuildValue("(NNL)", items, stamps, newest);
none:
    Py_XDECREF(items);
    Py_XDECREF(stamps);
    Py_RETURN_NONE;
error:
    Py_XDECREF(items);
    Py_XDECREF(stamps);
    return NULL;
}

/* ---- counting per (item, slot), split by the item's partition ------------------------------------------ */

#define MAX_SLOT_GROUPS 16   /* more distinct slots in one envelope: None, and Python counts it */

static long long floor_div(long long a, long long b) {
    long long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

typedef struct {
    long long slot;
    PyObject *slot_obj;   /* the slot as an int, shared by its entries */
    PyObject *counts;     /* item -> count, in order of first appearance */
} SlotGroup;

typedef struct {
    SlotGroup groups[MAX_SLOT_GROUPS];
    int n_groups;
    unsigned char *created_in;   /* per new (item, slot) key, in order of first appearance: its group */
    Py_ssize_t n_created;
    PyObject **rows;      /* per target partition: (items, slots, counts), or NULL */
    long *targets;        /* targets in order of first appearance */
    long n_targets;
} Counting;

static void counting_free(Counting *c, long n_partitions) {
    for (int g = 0; g < c->n_groups; g++) {
        Py_XDECREF(c->groups[g].slot_obj);
        Py_XDECREF(c->groups[g].counts);
    }
    if (c->rows != NULL) {
        for (long t = 0; t < n_partitions; t++) Py_XDECREF(c->rows[t]);
        PyMem_Free(c->rows);
    }
    PyMem_Free(c->targets);
    PyMem_Free(c->created_in);
}

/* The group of `slot` (the last one used first: events come mostly in time order); NULL when full or on error. */
static SlotGroup *group_of(Counting *c, long long slot, int *last) {
    if (*last >= 0 && c->groups[*last].slot == slot) return &c->groups[*last];
    for (int g = 0; g < c->n_groups; g++) {
        if (c->groups[g].slot == slot) {
            *last = g;
            return &c->groups[g];
        }
    }
    if (c->n_groups == MAX_SLOT_GROUPS) return NULL;
    SlotGroup *group = &c->groups[c->n_groups];
    group->slot = slot;
    group->slot_obj = PyLong_FromLongLong(slot);
    group->counts = PyDict_New();
    c->n_groups++;   /* counted before the checks: counting_free releases what was made */
    if (group->slot_obj == NULL || group->counts == NULL) return NULL;
    *last = c->n_groups - 1;
    return group;
}

/* counts[item] += 1 (1 when new, and its group noted in `created_in`); 0 on error. */
static int add_one(Counting *c, int group, PyObject *item, PyObject *one) {
    PyObject *counts = c->groups[group].counts;
    Py_ssize_t before = PyDict_GET_SIZE(counts);
    PyObject *old = PyDict_SetDefault(counts, item, one);   /* borrowed */
    if (old == NULL) return 0;
    if (PyDict_GET_SIZE(counts) > before) {   /* new: set to 1 */
        c->created_in[c->n_created++] = (unsigned char)group;
        return 1;
    }
    PyObject *increased = PyNumber_Add(old, one);
    if (increased == NULL) return 0;
    int ok = PyDict_SetItem(counts, item, increased) == 0;
    Py_DECREF(increased);
    return ok;
}

/* The partition of `item` (a str): hashed every time, which is cheaper than a lookup in a large cache dict
   (a dict of 100,000 ids misses the CPU cache; murmur2 of a short id is a few ns). -1 on error. */
static long partition_of_str(PyObject *item, long n_partitions) {
    Py_ssize_t length;
    const char *utf8 = PyUnicode_AsUTF8AndSize(item, &length);   /* a compact ASCII str's own bytes */
    if (utf8 == NULL) return -1;
    return partition_of_utf8(utf8, length, n_partitions);
}

/* Append (item, slot, count) to the target's rows (made on first use); 0 on error. */
static int append_entry(Counting *c, long target, PyObject *item, PyObject *slot, PyObject *count) {
    PyObject *rows = c->rows[target];
    if (rows == NULL) {
        rows = PyTuple_New(3);
        if (rows == NULL) return 0;
        for (int k = 0; k < 3; k++) {
            PyObject *column = PyList_New(0);
            if (column == NULL) {
                Py_DECREF(rows);
                return 0;
            }
            PyTuple_SET_ITEM(rows, k, column);   /* steals it */
        }
        c->rows[target] = rows;
        c->targets[c->n_targets++] = target;
    }
    return PyList_Append(PyTuple_GET_ITEM(rows, 0), item) == 0 && PyList_Append(PyTuple_GET_ITEM(rows, 1), slot) == 0
           && PyList_Append(PyTuple_GET_ITEM(rows, 2), count) == 0;
}

static PyObject *count_by_partition(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "count_by_partition(item_ids: list, ts_ms: list, slot_ms: int, n_partitions: int)");
        return NULL;
    }
    PyObject *item_ids = args[0], *stamps = args[1];
    Py_ssize_t n = PyList_GET_SIZE(item_ids);
    if (PyList_GET_SIZE(stamps) != n) {
        PyErr_SetString(PyExc_ValueError, "item_ids and ts_ms differ in length");
        return NULL;
    }
    long long slot_ms = PyLong_AsLongLong(args[2]);
    if (slot_ms == -1 && PyErr_Occurred()) return NULL;
    long n_partitions = PyLong_AsLong(args[3]);
    if (n_partitions == -1 && PyErr_Occurred()) return NULL;
    if (slot_ms < 1 || n_partitions < 1 || n_partitions > 1000000) {
        PyErr_SetString(PyExc_ValueError, "slot_ms must be positive and n_partitions in [1, 10^6]");
        return NULL;
    }
    Counting c = {.n_groups = 0, .n_targets = 0};
    c.rows = PyMem_Calloc((size_t)n_partitions, sizeof(PyObject *));
    c.targets = PyMem_Calloc((size_t)n_partitions, sizeof(long));
    c.created_in = PyMem_Malloc((size_t)(n > 0 ? n : 1));
    PyObject *one = PyLong_FromLong(1), *out = NULL;
    if (c.rows == NULL || c.targets == NULL || c.created_in == NULL || one == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    int last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(item_ids, i);
        if (!PyUnicode_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "item ids must be str");
            goto error;
        }
        long long ts = PyLong_AsLongLong(PyList_GET_ITEM(stamps, i));
        if (ts == -1 && PyErr_Occurred()) goto error;
        SlotGroup *group = group_of(&c, floor_div(ts, slot_ms), &last);
        if (group == NULL) {
            if (PyErr_Occurred()) goto error;
            counting_free(&c, n_partitions);   /* too many slots for this path */
            Py_DECREF(one);
            Py_RETURN_NONE;
        }
        if (!add_one(&c, (int)(group - c.groups), item, one)) goto error;
    }
    /* the keys in order of first appearance, as Counter over (item, slot) has them: each group's dict keeps its
       own order, and `created_in` says which group's next key comes next */
    Py_ssize_t positions[MAX_SLOT_GROUPS] = {0};
    for (Py_ssize_t k = 0; k < c.n_created; k++) {
        int g = c.created_in[k];
        PyObject *item, *count;
        if (!PyDict_Next(c.groups[g].counts, &positions[g], &item, &count)) {
            PyErr_SetString(PyExc_RuntimeError, "count_by_partition lost a key");
            goto error;
        }
        long target = partition_of_str(item, n_partitions);
        if (target < 0 || !append_entry(&c, target, item, c.groups[g].slot_obj, count)) goto error;
    }
    out = PyDict_New();
    if (out == NULL) goto error;
    for (long k = 0; k < c.n_targets; k++) {
        PyObject *key = PyLong_FromLong(c.targets[k]);
        int failed = key == NULL || PyDict_SetItem(out, key, c.rows[c.targets[k]]) != 0;
        Py_XDECREF(key);
        if (failed) goto error;
    }
    counting_free(&c, n_partitions);
    Py_DECREF(one);
    return out;
error:
    counting_free(&c, n_partitions);
    Py_XDECREF(one);
    Py_XDECREF(out);
    return NULL;
}

/* ---- stage 2's column checks of a deltas message ------------------------------------------------------- */

static PyObject *int_column_within(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "int_column_within(values: list, low: int, high: int, nondecreasing: bool)");
        return NULL;
    }
    long long low = PyLong_AsLongLong(args[1]);
    if (low == -1 && PyErr_Occurred()) return NULL;
    long long high = PyLong_AsLongLong(args[2]);
    if (high == -1 && PyErr_Occurred()) return NULL;
    int nondecreasing = PyObject_IsTrue(args[3]);
    if (nondecreasing < 0) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(args[0]);
    long long previous = low;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyList_GET_ITEM(args[0], i);
        if (!PyLong_CheckExact(value)) Py_RETURN_FALSE;   /* exactly int: not a bool, not a float */
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || v < low || v > high || (nondecreasing && v < previous)) Py_RETURN_FALSE;
        previous = v;
    }
    Py_RETURN_TRUE;
}

static PyObject *str_column_within(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "str_column_within(values: list, min_chars: int, max_chars: int)");
        return NULL;
    }
    Py_ssize_t low = PyLong_AsSsize_t(args[1]);
    if (low == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t high = PyLong_AsSsize_t(args[2]);
    if (high == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(args[0]);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyList_GET_ITEM(args[0], i);
        if (!PyUnicode_CheckExact(value)) Py_RETURN_FALSE;
        Py_ssize_t chars = PyUnicode_GET_LENGTH(value);
        if (chars < low || chars > high) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"scan_plain_envelope", (PyCFunction)(void (*)(void))scan_plain_envelope, METH_FASTCALL,
     "(item_ids, ts_ms, newest) of an envelope of plain events, or None."},
    {"count_by_partition", (PyCFunction)(void (*)(void))count_by_partition, METH_FASTCALL,
     "{target: (items, slots, counts)}: events counted per (item, slot), split by the item's partition."},
    {"int_column_within", (PyCFunction)(void (*)(void))int_column_within, METH_FASTCALL,
     "Every element is exactly an int in [low, high] (and not below the one before, if nondecreasing)."},
    {"str_column_within", (PyCFunction)(void (*)(void))str_column_within, METH_FASTCALL,
     "Every element is exactly a str of min_chars to max_chars code points."},
    {"murmur2_partition", (PyCFunction)(void (*)(void))murmur2_partition, METH_FASTCALL,
     "Kafka's default partition of a key: murmur2, positive, mod n_partitions."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "streams._fastpath",
    .m_doc = "The worker's per-event and per-entry work, compiled: envelope scanning, counting, column checks.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
