// Counts heap allocations in a process it is preloaded into (LD_PRELOAD), for the allocation gate of a get
// hit (Tests/Allocations): every malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign adds one
// to a process-wide counter. On SIGUSR2 the counter is written, as decimal text, to the file named by
// $MALLOC_COUNTER_FILE (rewritten each time, then renamed into place so a reader never sees half a number).
//
// Build: cc -O2 -shared -fPIC -o malloc_counter.so malloc_counter.c -ldl
//
// glibc's own allocator is reached through __libc_malloc and friends (no dlsym, which itself allocates).

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_ullong allocations;
static unsigned long long dumps;

void *malloc(size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return __libc_realloc(p, size);
}

void *memalign(size_t alignment, size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    void *p = __libc_memalign(alignment, size);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}

static void dump(int sig) {
    (void)sig;
    const char *path = getenv("MALLOC_COUNTER_FILE");
    if (path == NULL) return;
    char tmp[4096];
    size_t n = strlen(path);
    if (n + 5 >= sizeof tmp) return;
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    // Only async-signal-safe calls below: open, write, close, rename; the number is formatted by hand.
    char text[64];
    unsigned long long v = atomic_load_explicit(&allocations, memory_order_relaxed);
    int i = sizeof text;
    text[--i] = '\n';
    do {
        text[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    text[--i] = ' ';
    unsigned long long seq = ++dumps;
    do {
        text[--i] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq > 0);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    ssize_t ignored = write(fd, text + i, sizeof text - i);
    (void)ignored;
    close(fd);
    rename(tmp, path);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = dump;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGUSR2, &action, NULL);
}
