/* The collector bench's timer inside a container, where there is no Python: spawns each
 * PROGRAM (argv[0] APPLET) N times, interleaved (the order flips every round so drift cancels),
 * waits for each, and prints every spawn-to-exit duration in ns as JSON, one list per PROGRAM.
 * Built static (the container has no libc of ours) by bench/collector.py.
 *
 *     exec-timer N APPLET PROGRAM...
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: exec-timer N APPLET PROGRAM...\n");
        return 2;
    }
    int n = atoi(argv[1]), k = argc - 3;
    char *args[] = {argv[2], NULL};
    long long *took = calloc((size_t)n * k, sizeof *took);
    if (n <= 0 || took == NULL) {
        fprintf(stderr, "exec-timer: bad count %s\n", argv[1]);
        return 2;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < k; j++) {
            int p = i % 2 ? j : k - 1 - j;
            pid_t pid;
            int status;
            long long started = now_ns();
            int rc = posix_spawn(&pid, argv[3 + p], NULL, NULL, args, environ);
            if (rc != 0) {
                fprintf(stderr, "exec-timer: %s: %s\n", argv[3 + p], strerror(rc));
                return 1;
            }
            waitpid(pid, &status, 0);
            took[(size_t)p * n + i] = now_ns() - started;
        }
    }
    putchar('[');
    for (int p = 0; p < k; p++) {
        printf(p ? ",[" : "[");
        for (int i = 0; i < n; i++)
            printf(i ? ",%lld" : "%lld", took[(size_t)p * n + i]);
        putchar(']');
    }
    puts("]");
    return 0;
}
