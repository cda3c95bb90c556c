#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>
#include "cspawn.h"

int cached_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cached_spawn_file_actions_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

short cached_spawn_setsid_flag(void) { return POSIX_SPAWN_SETSID; }
