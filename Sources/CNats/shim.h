#ifndef NEUTRINO_CNATS_SHIM_H
#define NEUTRINO_CNATS_SHIM_H
// Swift's Glibc module is built without _GNU_SOURCE, and Clang refuses one type (fd_set) with two layouts in one
// Swift module. Including glibc's headers first settles them as SwiftGlibc sees them (the same fix as CPython's
// shim); nats.h needs nothing from _GNU_SOURCE, so it is not defined here.
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/select.h>
#include <pthread.h>
#include <time.h>
#include <nats/nats.h>
#endif
