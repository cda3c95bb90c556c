/*
 * The floor for the cold-get benchmark: the least any server could add to the waiters' latency.
 *
 * It does only what the scenario needs: accept connections on a Unix socket, read one request line
 * from each, start a timer of HANDLER_SECONDS at the first request (the "handler"), and when it fires
 * write one fixed answer to every connection that asked, in a tight loop, single-threaded epoll.
 * No JSON, no Redis, no worker. Each handler run appends "identity start end" (CLOCK_MONOTONIC ns)
 * to COUNT_FILE like scripts/bench/bench_handler.py does, so run.py reads both the same way.
 *
 * usage: fanout_floor SOCKET_PATH HANDLER_SECONDS COUNT_FILE
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET_PATH HANDLER_SECONDS COUNT_FILE\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long long handler_ns = (long long)(atof(argv[2]) * 1e9);
    const char *count_file = argv[3];
    static const char answer[] =
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"hit\":false,\"value\":\"{\\\"name\\\": \\\"cold entry\\\"}\"}}\n";

    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = {0};
    address.sun_family = AF_UNIX;
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    unlink(path);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4096) != 0) {
        perror("fanout_floor: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &event);

    int capacity = 1 << 16;
    int *askers = malloc(sizeof(int) * capacity);
    int asked = 0;
    long long started = 0;
    struct epoll_event events[512];
    char buffer[4096];
    for (;;) {
        int timeout = -1;
        if (asked > 0) {
            long long left = started + handler_ns - now_ns();
            if (left <= 0) {
                long long ended = now_ns();
                for (int i = 0; i < asked; i++) {
                    if (write(askers[i], answer, sizeof answer - 1) < 0) perror("fanout_floor: write");
                }
                FILE *f = fopen(count_file, "a");
                if (f) {
                    fprintf(f, "floor %lld %lld\n", started, ended);
                    fclose(f);
                }
                asked = 0;
                continue;
            }
            timeout = (int)(left / 1000000) + 1;
        }
        int n = epoll_wait(ep, events, 512, timeout);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int client = accept(listener, NULL, NULL);
                if (client < 0) continue;
                struct epoll_event e = {.events = EPOLLIN, .data.fd = client};
                epoll_ctl(ep, EPOLL_CTL_ADD, client, &e);
                continue;
            }
            ssize_t r = read(fd, buffer, sizeof buffer);
            if (r <= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                continue;
            }
            if (asked == 0) started = now_ns();
            if (asked < capacity) askers[asked++] = fd;
        }
    }
}
