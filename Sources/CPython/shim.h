#ifndef NEUTRINO_CPYTHON_SHIM_H
#define NEUTRINO_CPYTHON_SHIM_H
// pyconfig.h defines _GNU_SOURCE, which changes glibc's fd_set member names; Swift's Glibc module is built
// without it, and Clang refuses one type with two layouts in one Swift module. Including glibc's headers first
// settles them as SwiftGlibc sees them; Python.h's later _GNU_SOURCE no longer changes them.
#include <stdio.h>
#include <stdlib.h>
#include <sys/select.h>
#include <pthread.h>
#include <time.h>
#include <sys/prctl.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>

// Globals and macros Swift 6 cannot use directly (mutable C globals are not concurrency-safe to name).
static inline PyObject *neutrino_py_none(void) { return Py_None; }
static inline PyObject *neutrino_py_timeout_error(void) { return PyExc_TimeoutError; }

// The calling thread's timers fire at their deadline instead of up to the kernel's default 50 µs of slack after
// it (prctl is variadic, which Swift cannot call). Python threads sleep in `time.sleep`, `select` and friends.
static inline void neutrino_precise_timers(void) { (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); }
#endif
