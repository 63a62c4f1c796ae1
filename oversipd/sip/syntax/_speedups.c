/* oversipd.sip._speedups: the header-block scan of parse_message, in C.
 *
 * scan(data, known, compact, checked) does exactly what
 * oversipd.sip.message._scan_python does (the pure-Python fallback, which the
 * same tests run against): skip leading CRLFs, find the end of the header
 * block, cut it into logical lines (folded continuation lines joined with
 * their CRLF kept), decode each as UTF-8 with surrogateescape, name each
 * header line by its key, and collect the stripped values of the `checked`
 * headers. It returns
 *     (start, end, start_line, lines, keys, found, folded)
 * or a str: the reason the block cannot be parsed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
decode(const char *s, Py_ssize_t n)
{
    return PyUnicode_DecodeUTF8(s, n, "surrogateescape");
}

/* The `known` names (header spellings → keys) as a small open-addressing table
 * of their ASCII bytes, so that naming a usual header line allocates nothing.
 * Built from the dict passed in, again if another dict is passed. */
#define TABLE_SIZE 512
typedef struct {
    char *name;
    Py_ssize_t length;
    PyObject *key;
} entry;
static entry table[TABLE_SIZE];
static PyObject *table_source = NULL;

static size_t
hash_bytes(const char *s, Py_ssize_t n)
{
    size_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static void
clear_table(void)
{
    for (int i = 0; i < TABLE_SIZE; i++) {
        PyMem_Free(table[i].name);
        Py_CLEAR(table[i].key);
        table[i].name = NULL;
        table[i].length = 0;
    }
    Py_CLEAR(table_source);
}

/* 0, or -1 with an exception set. Names that are not ASCII, and any beyond half
 * the table, are left to the dict lookup. */
static int
build_table(PyObject *known)
{
    PyObject *name, *key;
    Py_ssize_t pos = 0, used = 0;
    clear_table();
    while (PyDict_Next(known, &pos, &name, &key)) {
        if (!PyUnicode_Check(name) || !PyUnicode_IS_ASCII(name) || used >= TABLE_SIZE / 2)
            continue;
        Py_ssize_t length = PyUnicode_GET_LENGTH(name);
        const char *bytes = (const char *)PyUnicode_1BYTE_DATA(name);
        size_t slot = hash_bytes(bytes, length) & (TABLE_SIZE - 1);
        while (table[slot].name != NULL)
            slot = (slot + 1) & (TABLE_SIZE - 1);
        table[slot].name = PyMem_Malloc(length ? (size_t)length : 1);
        if (table[slot].name == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(table[slot].name, bytes, (size_t)length);
        table[slot].length = length;
        Py_INCREF(key);
        table[slot].key = key;
        used++;
    }
    Py_INCREF(known);
    table_source = known;
    return 0;
}

/* The key of a known spelling (borrowed), or NULL. */
static PyObject *
table_key(const char *s, Py_ssize_t n)
{
    size_t slot = hash_bytes(s, n) & (TABLE_SIZE - 1);
    while (table[slot].name != NULL) {
        if (table[slot].length == n && memcmp(table[slot].name, s, (size_t)n) == 0)
            return table[slot].key;
        slot = (slot + 1) & (TABLE_SIZE - 1);
    }
    return NULL;
}

/* Index of the next CRLF at or after pos, before limit; limit when there is none. */
static Py_ssize_t
next_crlf(const char *d, Py_ssize_t pos, Py_ssize_t limit)
{
    while (pos < limit) {
        const char *cr = memchr(d + pos, '\r', (size_t)(limit - pos));
        if (cr == NULL)
            return limit;
        pos = cr - d;
        if (pos + 1 < limit && d[pos + 1] == '\n')
            return pos;
        pos++;
    }
    return limit;
}

/* The key of a header name the `known` dict does not hold: name.rstrip(" \t").lower(),
 * compact forms expanded. New reference, or NULL with an exception set; an empty
 * key is returned as is (the caller refuses it). */
static PyObject *
slow_key(PyObject *name, PyObject *compact)
{
    PyObject *stripped = PyObject_CallMethod(name, "rstrip", "s", " \t");
    if (stripped == NULL)
        return NULL;
    PyObject *lowered = PyObject_CallMethod(stripped, "lower", NULL);
    Py_DECREF(stripped);
    if (lowered == NULL)
        return NULL;
    PyObject *full = PyDict_GetItemWithError(compact, lowered);
    if (full != NULL) {
        Py_INCREF(full);
        Py_DECREF(lowered);
        return full;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(lowered);
        return NULL;
    }
    return lowered;
}

static PyObject *
scan(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    PyObject *known, *compact, *checked;
    PyObject *lines = NULL, *keys = NULL, *found = NULL, *first = NULL, *result = NULL;
    int folded = 0;

    if (!PyArg_ParseTuple(args, "y*O!O!O", &buf, &PyDict_Type, &known, &PyDict_Type, &compact,
                          &checked))
        return NULL;
    const char *d = buf.buf;
    Py_ssize_t n = buf.len;
    if (known != table_source && build_table(known) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }

    Py_ssize_t start = 0;
    while (start + 1 < n && d[start] == '\r' && d[start + 1] == '\n')
        start += 2;
    Py_ssize_t end = -1;
    for (Py_ssize_t pos = start; pos + 3 < n;) {
        const char *cr = memchr(d + pos, '\r', (size_t)(n - 3 - pos));
        if (cr == NULL)
            break;
        pos = cr - d;
        if (d[pos + 1] == '\n' && d[pos + 2] == '\r' && d[pos + 3] == '\n') {
            end = pos;
            break;
        }
        pos++;
    }
    if (end < 0) {
        result = PyUnicode_FromString("No end of header block");
        goto done;
    }

    lines = PyList_New(0);
    keys = PyList_New(0);
    found = PyDict_New();
    if (lines == NULL || keys == NULL || found == NULL)
        goto error;

    Py_ssize_t pos = start;
    int is_first = 1;
    for (;;) {
        /* One logical line: a physical line and the continuation lines after it. */
        Py_ssize_t line_start = pos;
        Py_ssize_t line_end = next_crlf(d, pos, end);
        while (line_end < end && (d[line_end + 2] == ' ' || d[line_end + 2] == '\t')) {
            folded = 1;
            line_end = next_crlf(d, line_end + 2, end);
        }
        Py_ssize_t length = line_end - line_start;
        PyObject *line = decode(d + line_start, length);
        if (line == NULL)
            goto error;
        if (is_first) {
            first = line;
            is_first = 0;
        } else {
            const char *colon = memchr(d + line_start, ':', (size_t)length);
            Py_ssize_t name_length = colon ? colon - (d + line_start) : length;
            PyObject *key = colon ? table_key(d + line_start, name_length) : NULL;
            if (key != NULL) {
                Py_INCREF(key);
            } else {
                PyObject *name = decode(d + line_start, name_length);
                if (name == NULL) {
                    Py_DECREF(line);
                    goto error;
                }
                key = colon ? PyDict_GetItemWithError(known, name) : NULL;
                if (key != NULL) {
                    Py_INCREF(key);
                } else if (PyErr_Occurred()) {
                    Py_DECREF(name);
                    Py_DECREF(line);
                    goto error;
                } else {
                    key = slow_key(name, compact);
                    if (key == NULL) {
                        Py_DECREF(name);
                        Py_DECREF(line);
                        goto error;
                    }
                    if (colon == NULL || PyUnicode_GET_LENGTH(key) == 0) {
                        Py_DECREF(key);
                        Py_DECREF(name);
                        Py_DECREF(line);
                        result = PyUnicode_FromString("Bad header line");
                        goto done;
                    }
                }
                Py_DECREF(name);
            }
            int status = PyList_Append(keys, key);
            if (status == 0)
                status = PyList_Append(lines, line);
            Py_DECREF(line);
            int wanted = status == 0 ? PySequence_Contains(checked, key) : -1;
            if (wanted < 0) {
                Py_DECREF(key);
                goto error;
            }
            if (wanted) {
                Py_ssize_t v = colon - d + 1, v_end = line_end;
                while (v < v_end && (d[v] == ' ' || d[v] == '\t'))
                    v++;
                while (v_end > v && (d[v_end - 1] == ' ' || d[v_end - 1] == '\t'))
                    v_end--;
                PyObject *value = decode(d + v, v_end - v);
                if (value == NULL) {
                    Py_DECREF(key);
                    goto error;
                }
                PyObject *values = PyDict_GetItemWithError(found, key);
                if (values != NULL) {
                    status = PyList_Append(values, value);
                } else if (PyErr_Occurred()) {
                    status = -1;
                } else {
                    values = PyList_New(1);
                    if (values == NULL) {
                        status = -1;
                    } else {
                        Py_INCREF(value);
                        PyList_SET_ITEM(values, 0, value);
                        status = PyDict_SetItem(found, key, values);
                        Py_DECREF(values);
                    }
                }
                Py_DECREF(value);
                if (status < 0) {
                    Py_DECREF(key);
                    goto error;
                }
            }
            Py_DECREF(key);
        }
        if (line_end >= end)
            break;
        pos = line_end + 2;
    }
    result = Py_BuildValue("nnOOOOO", start, end, first, lines, keys, found,
                           folded ? Py_True : Py_False);
    goto done;

error:
    Py_CLEAR(result);
done:
    Py_XDECREF(first);
    Py_XDECREF(lines);
    Py_XDECREF(keys);
    Py_XDECREF(found);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data, known, compact, checked): the header block of a SIP message, cut and named."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "oversipd.sip.syntax._speedups",
    "C speed-ups of oversipd.sip (optional: oversipd.sip has the same in Python).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
