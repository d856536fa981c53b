#ifndef NEUTRINO_CSQLITE_SHIM_H
#define NEUTRINO_CSQLITE_SHIM_H
#include <sqlite3.h>
// SQLITE_TRANSIENT is a macro Swift cannot import.
static inline void (*neutrino_sqlite_transient(void))(void *) { return SQLITE_TRANSIENT; }
#endif
