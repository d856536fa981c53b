#ifndef NEUTRINO_CSQLITE_SHIM_H
#define NEUTRINO_CSQLITE_SHIM_H
#include <sqlite3.h>
// SQLITE_TRANSIENT is a macro Swift cannot import.
static inline void (*neutrino_sqlite_transient(void))(void *) { return SQLITE_TRANSIENT; }
// sqlite3_config is variadic, which Swift cannot call. Memory statistics take a global mutex around every allocation
// SQLite makes (several per statement); nothing here reads them (no soft heap limit, no sqlite3_memory_used).
// Only effective before SQLite initialises; SQLITE_MISUSE afterwards, and nothing changes.
static inline int neutrino_sqlite_disable_memstatus(void) { return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); }
#endif
