/*
 * nbd-reconnect: keep a kernel NBD device (attached by `nbd-client`, netlink mode) alive
 * across restarts of its NBD server.
 *
 *   nbd-reconnect [-D dead-conn-timeout-s] [-q] [-r] [-R ready-fd] <index> <host> <port> <export>
 *   nbd-reconnect -s <bytes> <index>      (set the size of a netlink-attached device, exit)
 *   nbd-reconnect -l <bytes> <loop-device> (set a loop device's size limit, exit)
 *
 * -l serves the nbdfuse attach method, which caps a loop device below its file: no util-linux
 * command changes the limit of a bound loop device (`losetup -c` keeps it), the ioctl does.
 *
 * -R: once it watches the device, the helper writes "ready\n" on this (inherited) descriptor
 * and closes it, so whoever started it knows without reading its log.
 *
 * -r (resume) is for a helper that replaces one that died: the connection may have died while
 * nobody watched, so it first offers the kernel a fresh socket (kept only in place of a dead one).
 *
 * An <export> of "-" means the name is in the environment variable NBD_EXPORT_NAME: names
 * carry access secrets, and a long-lived command line is readable by every user.
 *
 * nbd-client 3.24 attaches through the netlink interface but sets no dead-connection
 * timeout and exits at once, so when the server goes away every queued request fails
 * with EIO. The 6.1 kernel offers what is missing:
 *
 *   - NBD_ATTR_DEAD_CONN_TIMEOUT (set here with NBD_CMD_RECONFIGURE): while no
 *     connection is alive, new requests wait up to that long for one instead of failing;
 *   - the request timeout (`nbd-client -t`): in-flight requests on a connection that
 *     died are requeued after it instead of failing;
 *   - NBD_CMD_LINK_DEAD, multicast on the "nbd_mc_group" group when a connection dies;
 *   - NBD_CMD_RECONFIGURE with NBD_ATTR_SOCKETS: a freshly negotiated socket replaces
 *     the dead one, and the waiting and requeued requests go out on it.
 *
 * So this program sets the dead-connection timeout, then waits for LINK_DEAD events for
 * its device; on each it connects again, redoes the handshake (NBD_OPT_GO with the
 * same export name; the export must not have shrunk or become read-only; if it grew, the
 * device grows with it) and hands the socket to the kernel. It exits when the device is disconnected (its size drops to 0)
 * or on SIGTERM. Every line it prints starts with "nbd-reconnect:".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NBD_FLAG_READ_ONLY (1 << 1)
#define NBDMAGIC 0x4e42444d41474943ULL
#define IHAVEOPT 0x49484156454f5054ULL
#define REPLY_MAGIC 0x3e889045565a9ULL
#define OPT_GO 7
#define REP_ACK 1
#define REP_INFO 3
#define INFO_EXPORT 0

static int quiet;
static volatile sig_atomic_t stop;

static void say(const char *fmt, ...) {
  va_list ap;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  printf("nbd-reconnect: [%ld.%03ld] ", (long)ts.tv_sec, ts.tv_nsec / 1000000);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- generic netlink ---------------------------------------------------------------- */

struct msg {
  char buf[4096];
  size_t len;
};

static struct nlattr *put_attr(struct msg *m, int type, const void *data, size_t len) {
  struct nlattr *a = (struct nlattr *)(m->buf + m->len);
  a->nla_type = type;
  a->nla_len = NLA_HDRLEN + len;
  if (len) memcpy((char *)a + NLA_HDRLEN, data, len);
  m->len += NLA_ALIGN(a->nla_len);
  return a;
}
static void end_nest(struct msg *m, struct nlattr *a) { a->nla_len = (m->buf + m->len) - (char *)a; }

static void start_msg(struct msg *m, int family, int cmd, int version) {
  memset(m->buf, 0, sizeof m->buf);
  struct nlmsghdr *h = (struct nlmsghdr *)m->buf;
  h->nlmsg_type = family;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  struct genlmsghdr *g = (struct genlmsghdr *)(m->buf + NLMSG_HDRLEN);
  g->cmd = cmd;
  g->version = version;
  m->len = NLMSG_HDRLEN + GENL_HDRLEN;
}

/* Sends a request and reads replies until the ack; calls `each` on data replies. */
static int transact(int sock, struct msg *m, void (*each)(struct nlmsghdr *, void *), void *ctx) {
  static uint32_t seq = 1;
  struct nlmsghdr *h = (struct nlmsghdr *)m->buf;
  h->nlmsg_len = m->len;
  h->nlmsg_seq = ++seq;
  if (send(sock, m->buf, m->len, 0) < 0) return -errno;
  for (;;) {
    char rbuf[16384];
    ssize_t n = recv(sock, rbuf, sizeof rbuf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    for (struct nlmsghdr *r = (struct nlmsghdr *)rbuf; NLMSG_OK(r, (size_t)n); r = NLMSG_NEXT(r, n)) {
      if (r->nlmsg_seq != seq) continue;
      if (r->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(r))->error;
      if (r->nlmsg_type == NLMSG_DONE) return 0;
      if (each) each(r, ctx);
    }
  }
}

#define FOR_ATTRS(a, start, len) \
  for (struct nlattr *a = (struct nlattr *)(start); (len) >= (int)NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && (int)a->nla_len <= (len); \
       (len) -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len)))

struct family {
  int id;
  uint32_t group;
};

static void on_family(struct nlmsghdr *r, void *ctx) {
  struct family *f = ctx;
  int len = r->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
  FOR_ATTRS(a, (char *)NLMSG_DATA(r) + GENL_HDRLEN, len) {
    if (a->nla_type == CTRL_ATTR_FAMILY_ID) f->id = *(uint16_t *)((char *)a + NLA_HDRLEN);
    if ((a->nla_type & NLA_TYPE_MASK) == CTRL_ATTR_MCAST_GROUPS) {
      int glen = a->nla_len - NLA_HDRLEN;
      FOR_ATTRS(g, (char *)a + NLA_HDRLEN, glen) {
        int ilen = g->nla_len - NLA_HDRLEN;
        const char *name = NULL;
        uint32_t id = 0;
        FOR_ATTRS(i, (char *)g + NLA_HDRLEN, ilen) {
          if (i->nla_type == CTRL_ATTR_MCAST_GRP_NAME) name = (char *)i + NLA_HDRLEN;
          if (i->nla_type == CTRL_ATTR_MCAST_GRP_ID) id = *(uint32_t *)((char *)i + NLA_HDRLEN);
        }
        if (name && strcmp(name, NBD_GENL_MCAST_GROUP_NAME) == 0) f->group = id;
      }
    }
  }
}

static int genl_socket(void) {
  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  struct sockaddr_nl addr = {.nl_family = AF_NETLINK};
  if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) return -1;
  return s;
}

static uint64_t new_size;

static int reconfigure(int sock, int family, uint32_t index, uint64_t dead_timeout, int fd) {
  struct msg m;
  start_msg(&m, family, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
  put_attr(&m, NBD_ATTR_INDEX, &index, sizeof index);
  if (new_size) put_attr(&m, NBD_ATTR_SIZE_BYTES, &new_size, sizeof new_size);
  if (dead_timeout) put_attr(&m, NBD_ATTR_DEAD_CONN_TIMEOUT, &dead_timeout, sizeof dead_timeout);
  if (fd >= 0) {
    struct nlattr *socks = put_attr(&m, NBD_ATTR_SOCKETS | NLA_F_NESTED, NULL, 0);
    struct nlattr *item = put_attr(&m, NBD_SOCK_ITEM | NLA_F_NESTED, NULL, 0);
    uint32_t ufd = fd;
    put_attr(&m, NBD_SOCK_FD, &ufd, sizeof ufd);
    end_nest(&m, item);
    end_nest(&m, socks);
  }
  return transact(sock, &m, NULL, NULL);
}

/* ---- NBD handshake ------------------------------------------------------------------ */

static int read_full(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len) {
    ssize_t n = read(fd, p, len);
    if (n <= 0) return -1;
    p += n;
    len -= n;
  }
  return 0;
}
static int write_full(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n <= 0) return -1;
    p += n;
    len -= n;
  }
  return 0;
}
static uint64_t be64(const void *p) {
  const unsigned char *b = p;
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | b[i];
  return v;
}

/* Connects and negotiates the export; returns the socket or -1 with a reason in `why`. */
static int nbd_connect(const char *host, const char *port, const char *name, uint64_t *size,
                       uint16_t *flags, char *why, size_t whylen) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
  int rc = getaddrinfo(host, port, &hints, &ai);
  if (rc) {
    snprintf(why, whylen, "resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  int s = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || connect(s, ai->ai_addr, ai->ai_addrlen) < 0) {
    snprintf(why, whylen, "connect: %s", strerror(errno));
    freeaddrinfo(ai);
    if (s >= 0) close(s);
    return -1;
  }
  freeaddrinfo(ai);
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timeval tv = {.tv_sec = 10};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  unsigned char hello[18];
  if (read_full(s, hello, sizeof hello) || be64(hello) != NBDMAGIC || be64(hello + 8) != IHAVEOPT) {
    snprintf(why, whylen, "not a newstyle NBD server");
    goto fail;
  }
  uint16_t sflags = hello[16] << 8 | hello[17];
  uint32_t cflags = htonl(sflags & 3); /* FIXED_NEWSTYLE, NO_ZEROES as offered */
  size_t nlen = strlen(name);
  unsigned char opt[16 + 4 + 1024 + 2];
  if (nlen > 1024) {
    snprintf(why, whylen, "export name too long");
    goto fail;
  }
  uint64_t magic = htobe64(IHAVEOPT);
  uint32_t o = htonl(OPT_GO), olen = htonl(4 + nlen + 2), nl = htonl(nlen);
  memcpy(opt, &magic, 8);
  memcpy(opt + 8, &o, 4);
  memcpy(opt + 12, &olen, 4);
  memcpy(opt + 16, &nl, 4);
  memcpy(opt + 20, name, nlen);
  opt[20 + nlen] = opt[21 + nlen] = 0;
  if (write_full(s, &cflags, 4) || write_full(s, opt, 22 + nlen)) {
    snprintf(why, whylen, "handshake write failed");
    goto fail;
  }
  int have_info = 0;
  for (;;) {
    unsigned char rep[20];
    if (read_full(s, rep, sizeof rep) || be64(rep) != REPLY_MAGIC) {
      snprintf(why, whylen, "bad option reply");
      goto fail;
    }
    uint32_t type = be64(rep + 8) & 0xffffffff;
    uint32_t len = be64(rep + 12) & 0xffffffff;
    unsigned char data[1024];
    if (len > sizeof data) {
      snprintf(why, whylen, "option reply too long");
      goto fail;
    }
    if (read_full(s, data, len)) {
      snprintf(why, whylen, "short option reply");
      goto fail;
    }
    if (type & 0x80000000u) {
      snprintf(why, whylen, "server refused export (error 0x%x): %.*s", type, (int)len, data);
      goto fail;
    }
    if (type == REP_INFO && len >= 12 && (data[0] << 8 | data[1]) == INFO_EXPORT) {
      *size = be64(data + 2);
      *flags = data[10] << 8 | data[11];
      have_info = 1;
    }
    if (type == REP_ACK) break;
  }
  if (!have_info) {
    snprintf(why, whylen, "server sent no export info");
    goto fail;
  }
  tv.tv_sec = 0;
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return s;
fail:
  close(s);
  return -1;
}

/* ---- main ------------------------------------------------------------------------------ */

static long long sysfs_num(const char *fmt, unsigned index) {
  char path[128];
  snprintf(path, sizeof path, fmt, index);
  FILE *f = fopen(path, "r");
  long long v = -1;
  if (f) {
    if (fscanf(f, "%lld", &v) != 1) v = -1;
    fclose(f);
  }
  return v;
}

/*
 * Connects again (backoff 0.1 s doubling to 1 s) and hands the socket to the kernel.
 * Returns 0 once reattached, 1 when the export can no longer serve the device (shrunk, became
 * read-only), -1 when the device was disconnected or we are told to stop. With `probe`, a
 * kernel that had no dead connection to replace is fine too (a restarted helper cannot know
 * whether the link died while nobody watched, so it offers a fresh socket in any case).
 */
static int reattach(int ctl, int family, uint32_t index, const char *host, const char *port,
                    const char *name, long long ro, int probe) {
  double t0 = now(), delay = 0.1;
  int attempts = 0;
  while (!stop) {
    char why[256] = "";
    uint64_t size = 0;
    uint16_t flags = 0;
    attempts++;
    int s = nbd_connect(host, port, name, &size, &flags, why, sizeof why);
    long long sectors = sysfs_num("/sys/block/nbd%u/size", index);
    if (s >= 0 && size < (uint64_t)sectors * 512) {
      close(s);
      say("export shrank (%llu, was %llu): not reattaching", (unsigned long long)size,
          (unsigned long long)sectors * 512);
      return 1;
    }
    /* An export that grew meanwhile (a volume expansion) is reattached at its new size. */
    new_size = s >= 0 && size > (uint64_t)sectors * 512 ? size : 0;
    if (s >= 0 && (flags & NBD_FLAG_READ_ONLY) && ro == 0) {
      close(s);
      say("export became read-only: not reattaching");
      return 1;
    }
    if (s >= 0) {
      int rc = reconfigure(ctl, family, index, 0, s);
      close(s); /* the kernel holds its own reference */
      if (rc == 0 || (probe && rc == -ENOSPC)) {
        if (new_size) say("/dev/nbd%u grew to %llu bytes", index, (unsigned long long)new_size);
        new_size = 0;
        if (probe) say("offered /dev/nbd%u a fresh connection (the kernel keeps it only for a dead link)", index);
        else say("reconnected /dev/nbd%u after %.2fs (%d attempts)", index, now() - t0, attempts);
        return 0;
      }
      snprintf(why, sizeof why, "RECONFIGURE: %s", strerror(-rc));
    }
    if (!quiet || attempts == 1 || attempts % 10 == 0) say("attempt %d failed: %s", attempts, why);
    if (sysfs_num("/sys/block/nbd%u/size", index) <= 0) return -1;
    usleep((useconds_t)(delay * 1e6));
    if (delay < 1) delay *= 2;
  }
  return -1;
}

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

/* -l: LOOP_SET_STATUS64 takes the whole struct, so read it first and change only the limit. */
static int set_loop_limit(const char *device, const char *bytes) {
  char *end;
  errno = 0;
  unsigned long long limit = strtoull(bytes, &end, 10);
  if (errno || *end || !*bytes || limit % 512) {
    fprintf(stderr, "nbd-reconnect: size limit \"%s\" is not a multiple of 512 bytes\n", bytes);
    return 2;
  }
  int fd = open(device, O_RDWR | O_CLOEXEC);
  struct loop_info64 info;
  if (fd < 0 || ioctl(fd, LOOP_GET_STATUS64, &info) < 0) {
    fprintf(stderr, "nbd-reconnect: %s: %s\n", device, strerror(errno));
    return 1;
  }
  info.lo_sizelimit = limit;
  int rc = ioctl(fd, LOOP_SET_STATUS64, &info);
  if (rc < 0) fprintf(stderr, "nbd-reconnect: %s: LOOP_SET_STATUS64: %s\n", device, strerror(errno));
  close(fd);
  return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv) {
  uint64_t dead_timeout = 120;
  int c;
  int resume = 0, ready_fd = -1;
  const char *loop_limit = NULL;
  while ((c = getopt(argc, argv, "D:l:qrR:s:")) != -1) {
    if (c == 'D') dead_timeout = strtoull(optarg, NULL, 10);
    else if (c == 'r') resume = 1;
    else if (c == 'R') ready_fd = atoi(optarg);
    else if (c == 's') new_size = strtoull(optarg, NULL, 10);
    else if (c == 'l') loop_limit = optarg;
    else if (c == 'q') quiet = 1;
    else return 2;
  }
  if (loop_limit) return argc - optind == 1 ? set_loop_limit(argv[optind], loop_limit) : 2;
  if (new_size && argc - optind == 1) {
    int ctl = genl_socket();
    struct family fam = {0};
    struct msg m;
    start_msg(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
    put_attr(&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, strlen(NBD_GENL_FAMILY_NAME) + 1);
    int rc = ctl < 0 ? -errno : transact(ctl, &m, on_family, &fam);
    if (!rc) rc = reconfigure(ctl, fam.id, strtoul(argv[optind], NULL, 10), 0, -1);
    if (rc) fprintf(stderr, "nbd-reconnect: resize: %s\n", strerror(-rc));
    return rc ? 1 : 0;
  }
  if (argc - optind != 4) {
    fprintf(stderr, "usage: nbd-reconnect [-D dead-conn-timeout-s] [-q] [-r] [-R ready-fd] <index> <host> <port> <export>\n");
    return 2;
  }
  uint32_t index = strtoul(argv[optind], NULL, 10);
  const char *host = argv[optind + 1], *port = argv[optind + 2], *name = argv[optind + 3];
  if (strcmp(name, "-") == 0) name = getenv("NBD_EXPORT_NAME");
  if (!name) {
    fprintf(stderr, "nbd-reconnect: export \"-\" but NBD_EXPORT_NAME is not set\n");
    return 2;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  signal(SIGPIPE, SIG_IGN);

  long long sectors = sysfs_num("/sys/block/nbd%u/size", index);
  long long ro = sysfs_num("/sys/block/nbd%u/ro", index);
  if (sectors <= 0) {
    fprintf(stderr, "nbd-reconnect: /dev/nbd%u is not connected\n", index);
    return 1;
  }

  int ctl = genl_socket(), events = genl_socket();
  if (ctl < 0 || events < 0) {
    perror("nbd-reconnect: netlink");
    return 1;
  }
  struct family fam = {0};
  struct msg m;
  start_msg(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
  put_attr(&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, strlen(NBD_GENL_FAMILY_NAME) + 1);
  int rc = transact(ctl, &m, on_family, &fam);
  if (rc || !fam.id || !fam.group) {
    fprintf(stderr, "nbd-reconnect: no nbd netlink family (%s)\n", strerror(-rc));
    return 1;
  }
  if (setsockopt(events, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &fam.group, sizeof fam.group) < 0) {
    perror("nbd-reconnect: join nbd_mc_group");
    return 1;
  }
  rc = reconfigure(ctl, fam.id, index, dead_timeout, -1);
  if (rc) {
    fprintf(stderr, "nbd-reconnect: setting the dead-connection timeout: %s\n", strerror(-rc));
    return 1;
  }
  say("watching /dev/nbd%u (dead-connection timeout %llus)", index, (unsigned long long)dead_timeout);
  if (ready_fd >= 0) {
    /* SIGPIPE is ignored: a starter that went away meanwhile only makes this write fail. */
    if (write(ready_fd, "ready\n", 6) != 6) say("could not signal readiness on fd %d: %s", ready_fd, strerror(errno));
    close(ready_fd);
  }
  if (resume) {
    rc = reattach(ctl, fam.id, index, host, port, name, ro, 1);
    if (rc) return rc < 0 ? 0 : rc;
  }

  while (!stop) {
    struct pollfd p = {.fd = events, .events = POLLIN};
    int n = poll(&p, 1, 1000);
    if (sysfs_num("/sys/block/nbd%u/size", index) <= 0) {
      say("/dev/nbd%u disconnected; exiting", index);
      return 0;
    }
    if (n <= 0) continue;
    char buf[8192];
    ssize_t len = recv(events, buf, sizeof buf, 0);
    int dead = 0;
    for (struct nlmsghdr *r = (struct nlmsghdr *)buf; len > 0 && NLMSG_OK(r, (size_t)len); r = NLMSG_NEXT(r, len)) {
      struct genlmsghdr *g = NLMSG_DATA(r);
      if (r->nlmsg_type != fam.id || g->cmd != NBD_CMD_LINK_DEAD) continue;
      int alen = r->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
      FOR_ATTRS(a, (char *)g + GENL_HDRLEN, alen) {
        if (a->nla_type == NBD_ATTR_INDEX && *(uint32_t *)((char *)a + NLA_HDRLEN) == index) dead = 1;
      }
    }
    if (!dead) continue;

    say("connection of /dev/nbd%u died; reconnecting", index);
    rc = reattach(ctl, fam.id, index, host, port, name, ro, 0);
    if (rc) return rc < 0 ? 0 : rc;
  }
  return 0;
}
