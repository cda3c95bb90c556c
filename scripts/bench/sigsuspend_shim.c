/*
 * LD_PRELOAD shim for running Swift programs under valgrind 3.19 (Debian 12) for the callgrind figure.
 *
 * Swift's concurrency runtime calls sigsuspend() with a signal mask that lives in read-only memory.
 * valgrind 3.19 writes into the mask it is given while handling rt_sigsuspend, and crashes with
 * "VALGRIND INTERNAL ERROR: Valgrind received a signal 11" (SEGV_ACCERR at the mask's address). This
 * shim passes a writable copy of the mask instead; the call means exactly the same. Only `make bench`
 * uses it, and only under valgrind.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

int sigsuspend(const sigset_t *mask) {
    sigset_t copy = *mask;
    return (int)syscall(SYS_rt_sigsuspend, &copy, _NSIG / 8);
}
