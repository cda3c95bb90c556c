#ifndef CACHED_CSYSTEMD_SHIM_H
#define CACHED_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>

/* sd_notify is not variadic, but SD_LISTEN_FDS_START is a macro: expose it as a function. */
static inline int cached_sd_listen_fds_start(void) { return SD_LISTEN_FDS_START; }
#endif
