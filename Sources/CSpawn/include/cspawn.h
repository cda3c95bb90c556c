#ifndef CACHED_CSPAWN_H
#define CACHED_CSPAWN_H
#include <spawn.h>

/* glibc's GNU extensions used to start worker processes, exposed without _GNU_SOURCE in Swift. */
int cached_pipe_cloexec(int fds[2]);
int cached_spawn_file_actions_addchdir(posix_spawn_file_actions_t *actions, const char *path);
short cached_spawn_setsid_flag(void);
#endif
