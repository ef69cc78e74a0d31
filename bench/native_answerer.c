/* The collector bench's native floor: a bare answering process in C. It holds every exec in
 * the mount of PATH (fanotify FAN_OPEN_EXEC_PERM), runs at the real-time priority the exec
 * answerer takes while it holds, and allows each exec at once, reading nothing. What a held exec
 * costs on this machine before any answer's work and without an interpreter: the figure that
 * says how much of a cached answer's time is the machine's. Prints "ready" once holding.
 *
 *     native-answerer PATH
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <sys/fanotify.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: native-answerer PATH\n");
        return 2;
    }
    int group = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK,
                              O_RDONLY | O_LARGEFILE);
    if (group < 0 || fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN_EXEC_PERM,
                                   AT_FDCWD, argv[1]) < 0) {
        perror("native-answerer: fanotify");
        return 1;
    }
    struct sched_param priority = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_FIFO, &priority) < 0) {
        perror("native-answerer: SCHED_FIFO");
        return 1;
    }
    puts("ready");
    fflush(stdout);
    /* aligned for the event records read into it */
    static struct fanotify_event_metadata events[256];
    for (;;) {
        struct pollfd ready = {.fd = group, .events = POLLIN};
        if (poll(&ready, 1, -1) < 0)
            continue;
        ssize_t len = read(group, events, sizeof events);
        if (len <= 0)
            continue;
        for (struct fanotify_event_metadata *event = events; FAN_EVENT_OK(event, len);
             event = FAN_EVENT_NEXT(event, len)) {
            if (event->mask & FAN_OPEN_EXEC_PERM) {
                struct fanotify_response answer = {.fd = event->fd, .response = FAN_ALLOW};
                if (write(group, &answer, sizeof answer) < 0)
                    perror("native-answerer: answer");
            }
            close(event->fd);
        }
    }
}
