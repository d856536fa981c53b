#ifndef NEUTRINO_CNATS_SHIM_H
#define NEUTRINO_CNATS_SHIM_H
// Python.h defines _GNU_SOURCE; define it here too (before any include) so both modules see one fd_set.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <nats/nats.h>
#endif
