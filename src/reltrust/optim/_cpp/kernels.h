/* reltrust CPU kernels: what the Python side (reltrust.optim._native) and the C source agree on.
 *
 * RT_ABI_VERSION is the one place the ABI version is written: the C library returns it from
 * rt_abi_version(), and _native reads it from this file and refuses a library that returns another
 * number. Bump it whenever an entry point's signature or meaning changes (a cached library built from
 * an older source then fails the check and is rebuilt).
 */
#ifndef RELTRUST_KERNELS_H
#define RELTRUST_KERNELS_H

#define RT_ABI_VERSION 7

/* The `way` argument of the layerwise entry points (rt_fromage, rt_lars, rt_lamb; see kernels.c). */
#define RT_BLOCKED 0
#define RT_GROUPED 1
#define RT_NORMS 2
#define RT_UPDATE 3

#endif
