/* streams._fastpath: stage 1's per-event work for plain envelopes, compiled (pure; no Kafka, no I/O).

Owns three functions, each the compiled twin of Python code that tests hold it to:

- scan_plain_envelope(value, lower_ts_ms, upper_ts_ms): the events of an envelope whose every event is plain
  (keys item_id, ts and optionally user_id, event_type; strings without escapes; ts a JSON integer in range),
  as (item_ids, ts_ms, oldest, newest); None for anything else, which `streams.events.decode_message` then
  reads in full and gives the reasons for. It never accepts what decode_message rejects: when in doubt, None.
- count_by_partition(item_ids, ts_ms, slot_ms, one_slot, cache, n_partitions): the events counted per
  (item, slot) in order of first appearance and split by the item's partition, {target: (items, slots, counts)}
  (what Counter + PartitionCache.many + a per-target loop made in Python).
- murmur2_partition(key, n_partitions): Kafka's Java-client partitioner (murmur2, positive, mod n).

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

/* A string without escapes, control characters or DEL: its bytes between the quotes. */
static int scan_string(Cursor *c, const char **start, Py_ssize_t *length) {
    if (!take_char(c, '"')) return 0;
    const unsigned char *s = c->p;
    while (c->p < c->end) {
        unsigned char ch = *c->p;
        if (ch == '"') {
            *start = (const char *)s;
            *length = c->p - s;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20 || ch == 0x7f) return 0;
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
static PyObject *checked_str(const char *start, Py_ssize_t length, Py_ssize_t max_chars) {
    if (length < 1 || length > 4 * max_chars) return NULL;
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
        skip_ws(c);
        if (!scan_string(c, &key_start, &key_length)) goto fail;
        int key = key_of(key_start, key_length);
        if (key == 0 || (seen & key)) goto fail;   /* another key, or one repeated: the full check decides */
        seen |= key;
        skip_ws(c);
        if (!take_char(c, ':')) goto fail;
        skip_ws(c);
        if (key == KEY_TS) {
            if (!scan_int(c, ts) || *ts < lower || *ts > upper) goto fail;
        } else {
            if (!scan_string(c, &value_start, &value_length)) goto fail;
            PyObject *text = checked_str(value_start, value_length, key == KEY_EVENT_TYPE ? 64 : 256);
            if (text == NULL) goto fail;
            if (key == KEY_ITEM_ID) item = text;
            else Py_DECREF(text);
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
    long long oldest = 0, newest = 0;
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
        if (PyList_GET_SIZE(stamps) == 1 || ts < oldest) oldest = ts;
        if (PyList_GET_SIZE(stamps) == 1 || ts > newest) newest = ts;
        skip_ws(&c);
        if (take_char(&c, ',')) continue;
        if (take_char(&c, ']')) break;
        goto none;
    }
    skip_ws(&c);
    if (c.p != c.end) goto none;
    return Py_BuildValue("(NNLL)", items, stamps, oldest, newest);
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

static long long floor_div(long long a, long long b) {
    long long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

/* key -> count, in order of first appearance (a dict keeps it); 0 on error. */
static int add_one(PyObject *counts, PyObject *key, PyObject *one) {
    PyObject *old = PyDict_GetItemWithError(counts, key);   /* borrowed */
    if (old == NULL) {
        if (PyErr_Occurred()) return 0;
        return PyDict_SetItem(counts, key, one) == 0;
    }
    PyObject *increased = PyNumber_Add(old, one);
    if (increased == NULL) return 0;
    int ok = PyDict_SetItem(counts, key, increased) == 0;
    Py_DECREF(increased);
    return ok;
}

/* The partition of `item` (a str), from `cache` or hashed and stored there; -1 on error. */
static long cached_partition(PyObject *cache, PyObject *item, long n_partitions) {
    PyObject *known = PyDict_GetItemWithError(cache, item);   /* borrowed */
    if (known != NULL) return PyLong_AsLong(known);
    if (PyErr_Occurred()) return -1;
    Py_ssize_t length;
    const char *utf8 = PyUnicode_AsUTF8AndSize(item, &length);
    if (utf8 == NULL) return -1;
    long partition = partition_of_utf8(utf8, length, n_partitions);
    PyObject *value = PyLong_FromLong(partition);
    if (value == NULL) return -1;
    int failed = PyDict_SetItem(cache, item, value);
    Py_DECREF(value);
    return failed ? -1 : partition;
}

/* Append (item, slot, count) to target's three lists in `out` (created on first use). 0 on error. */
static int append_entry(PyObject *out, long target, PyObject *item, PyObject *slot, PyObject *count) {
    PyObject *key = PyLong_FromLong(target);
    if (key == NULL) return 0;
    PyObject *rows = PyDict_GetItemWithError(out, key);   /* borrowed */
    if (rows == NULL) {
        if (PyErr_Occurred()) goto fail;
        rows = PyTuple_New(3);
        if (rows == NULL) goto fail;
        for (int k = 0; k < 3; k++) {
            PyObject *column = PyList_New(0);
            if (column == NULL) {
                Py_DECREF(rows);
                goto fail;
            }
            PyTuple_SET_ITEM(rows, k, column);   /* steals it */
        }
        int failed = PyDict_SetItem(out, key, rows);
        Py_DECREF(rows);   /* `out` holds it */
        if (failed) goto fail;
    }
    Py_DECREF(key);
    return PyList_Append(PyTuple_GET_ITEM(rows, 0), item) == 0 && PyList_Append(PyTuple_GET_ITEM(rows, 1), slot) == 0
           && PyList_Append(PyTuple_GET_ITEM(rows, 2), count) == 0;
fail:
    Py_DECREF(key);
    return 0;
}

static PyObject *count_by_partition(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || !PyDict_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "count_by_partition(item_ids: list, ts_ms: list, slot_ms: int, one_slot: int | None, "
                        "cache: dict, n_partitions: int)");
        return NULL;
    }
    PyObject *item_ids = args[0], *stamps = args[1], *one_slot = args[3], *cache = args[4];
    Py_ssize_t n = PyList_GET_SIZE(item_ids);
    if (PyList_GET_SIZE(stamps) != n) {
        PyErr_SetString(PyExc_ValueError, "item_ids and ts_ms differ in length");
        return NULL;
    }
    long long slot_ms = PyLong_AsLongLong(args[2]);
    if (slot_ms == -1 && PyErr_Occurred()) return NULL;
    long n_partitions = PyLong_AsLong(args[5]);
    if (n_partitions == -1 && PyErr_Occurred()) return NULL;
    if (slot_ms < 1 || n_partitions < 1 || n_partitions > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "slot_ms and n_partitions must be positive");
        return NULL;
    }
    int by_item = one_slot != Py_None;   /* every event in one slot: count by item alone, no (item, slot) tuples */
    PyObject *counts = PyDict_New(), *out = PyDict_New(), *one = PyLong_FromLong(1), *slot = NULL;
    if (counts == NULL || out == NULL || one == NULL) goto error;
    long long last_slot = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(item_ids, i);
        if (!PyUnicode_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "item ids must be str");
            goto error;
        }
        if (by_item) {
            if (!add_one(counts, item, one)) goto error;
            continue;
        }
        long long ts = PyLong_AsLongLong(PyList_GET_ITEM(stamps, i));
        if (ts == -1 && PyErr_Occurred()) goto error;
        long long s = floor_div(ts, slot_ms);
        if (slot == NULL || s != last_slot) {   /* events come mostly in time order: reuse the slot's int */
            Py_XDECREF(slot);
            slot = PyLong_FromLongLong(s);
            if (slot == NULL) goto error;
            last_slot = s;
        }
        PyObject *key = PyTuple_Pack(2, item, slot);
        if (key == NULL) goto error;
        int ok = add_one(counts, key, one);
        Py_DECREF(key);
        if (!ok) goto error;
    }
    Py_ssize_t position = 0;
    PyObject *key, *count;
    while (PyDict_Next(counts, &position, &key, &count)) {
        PyObject *item = by_item ? key : PyTuple_GET_ITEM(key, 0);
        PyObject *entry_slot = by_item ? one_slot : PyTuple_GET_ITEM(key, 1);
        long target = cached_partition(cache, item, n_partitions);
        if (target < 0 || !append_entry(out, target, item, entry_slot, count)) goto error;
    }
    Py_XDECREF(slot);
    Py_DECREF(counts);
    Py_DECREF(one);
    return out;
error:
    Py_XDECREF(slot);
    Py_XDECREF(counts);
    Py_XDECREF(out);
    Py_XDECREF(one);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_plain_envelope", (PyCFunction)(void (*)(void))scan_plain_envelope, METH_FASTCALL,
     "(item_ids, ts_ms, oldest, newest) of an envelope of plain events, or None."},
    {"count_by_partition", (PyCFunction)(void (*)(void))count_by_partition, METH_FASTCALL,
     "{target: (items, slots, counts)}: events counted per (item, slot), split by the item's partition."},
    {"murmur2_partition", (PyCFunction)(void (*)(void))murmur2_partition, METH_FASTCALL,
     "Kafka's default partition of a key: murmur2, positive, mod n_partitions."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "streams._fastpath",
                                    "Stage 1's per-event work for plain envelopes, compiled.", -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
