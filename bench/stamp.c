/* stamp FILE: append "$FSPL_SEQ <CLOCK_REALTIME ns>\n" to FILE and exit.
 *
 * The command the daemon runs in bench row D1 (arrival -> start latency).
 * A C program rather than a shell one-liner so that the time it records is
 * within microseconds of the exec: bash alone needs about a millisecond to
 * reach its first statement. It does not read its stdin (the payload). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (argc != 2) {
        fputs("usage: stamp FILE\n", stderr);
        return 2;
    }
    const char *seq = getenv("FSPL_SEQ");
    char line[96];
    int n = snprintf(line, sizeof line, "%s %lld\n", seq ? seq : "?",
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n) {
        perror(argv[1]);
        return 1;
    }
    return close(fd) == 0 ? 0 : 1;
}
