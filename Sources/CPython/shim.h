#ifndef NEUTRINO_CPYTHON_SHIM_H
#define NEUTRINO_CPYTHON_SHIM_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

// Globals and macros Swift 6 cannot use directly (mutable C globals are not concurrency-safe to name).
static inline PyObject *neutrino_py_none(void) { return Py_None; }
static inline PyObject *neutrino_py_timeout_error(void) { return PyExc_TimeoutError; }
#endif
