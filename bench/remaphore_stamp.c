/* remaphore_stamp FILE VERB PAYLOAD: append "PAYLOAD <CLOCK_REALTIME ns>\n"
 * to FILE. The script of bench row N1 (send -> script start): the payload
 * carries the sender's clock at publish, so the difference is the latency
 * through NATS, the waiter and the exec. C, so the stamp is taken within
 * microseconds of the exec. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (argc != 4) {
        fputs("usage: remaphore_stamp FILE VERB PAYLOAD\n", stderr);
        return 2;
    }
    char line[256];
    int n = snprintf(line, sizeof line, "%.100s %lld\n", argv[3],
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n) {
        perror(argv[1]);
        return 1;
    }
    return close(fd) == 0 ? 0 : 1;
}
