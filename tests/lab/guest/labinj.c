/*
 * labinj: the lab's guest-side firmware stand-in (static arm64, runs from
 * the initramfs, needs /dev/mem and no kernel module).
 *
 *   labinj hest                      list the GHES sources of the running HEST
 *   labinj setptr REG BLOCK          store BLOCK's address in status register REG
 *   labinj write SRC FILE [WAIT_MS]  write a CPER status block into SRC's block
 *   labinj sea SRC FILE [--victim]   write, then load from an unassigned PA
 *   labinj feed COUNT FILE SRC...    COUNT records round-robin over polled sources
 *   labinj madvise                   MADV_HWPOISON one of our own pages
 *   labinj hold SECONDS              own a page, print its PA, wait for SIGBUS
 *   labinj peek PA LEN               hex dump of physical memory
 *
 * Records are built on the host (rasd's CPER encoder) and passed as files.
 * With --victim, every 8-byte occurrence of VICTIM_PLACEHOLDER in the record
 * is replaced by the physical address of a page this process owns, so the
 * kernel's memory_failure() hits us: MF_ACTION_REQUIRED and a SIGBUS.
 *
 * Error status blocks live in firmware (EFI ACPI NVS) memory mapped as
 * device memory: only aligned 32-bit accesses are used (no memcpy), and the
 * block_status word is written last so the kernel never sees half a record.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEST_PATH "/sys/firmware/acpi/tables/HEST"
#define UNASSIGNED_PA 0x09100000UL /* hole in the virt memory map: SEA on load */
#define VICTIM_PLACEHOLDER 0x4c41424c41425041ULL /* "APBALBAL" */
#define MAX_SOURCES 64

static int quiet; /* feed: no line per record */

struct source {
	unsigned type, id, notify, block_len;
	uint64_t status_reg, ack_reg;
};

static uint64_t num(const char *s) { return strtoull(s, NULL, 0); }

static void die(const char *what)
{
	fprintf(stderr, "labinj: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* Map [pa, pa+len) of physical memory; returns a pointer to pa. */
static volatile uint32_t *map_phys(uint64_t pa, size_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t base = pa & ~(uint64_t)(pg - 1);
	int fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0)
		die("/dev/mem");
	void *m = mmap(NULL, len + (pa - base), PROT_READ | PROT_WRITE, MAP_SHARED, fd, base);
	if (m == MAP_FAILED)
		die("mmap /dev/mem");
	close(fd);
	return (volatile uint32_t *)((char *)m + (pa - base));
}

static uint64_t read64(uint64_t pa)
{
	volatile uint32_t *p = map_phys(pa, 8);
	return p[0] | (uint64_t)p[1] << 32;
}

static uint32_t get32(const unsigned char *b) { uint32_t v; memcpy(&v, b, 4); return v; }
static uint64_t get64(const unsigned char *b) { uint64_t v; memcpy(&v, b, 8); return v; }

/* Walk the HEST subtables (ACPI 6.x §18.3.2); sizes of the types we skip. */
static int parse_hest(struct source *out)
{
	static unsigned char t[65536];
	int fd = open(HEST_PATH, O_RDONLY), n = 0;
	if (fd < 0)
		die(HEST_PATH);
	ssize_t len = read(fd, t, sizeof t);
	close(fd);
	if (len < 40)
		die("short HEST");
	uint32_t count = get32(t + 36), off = 40;
	for (uint32_t i = 0; i < count && off + 4 <= (uint32_t)len; i++) {
		unsigned type = t[off] | t[off + 1] << 8, size;
		switch (type) {
		case 6: size = 48; break;
		case 7: size = 44; break;
		case 8: size = 56; break;
		case 9: size = 64; break;
		case 10: size = 92; break;
		default:
			fprintf(stderr, "labinj: HEST subtable type %u not handled\n", type);
			return n;
		}
		if ((type == 9 || type == 10) && n < MAX_SOURCES) {
			struct source *s = &out[n++];
			s->type = type;
			s->id = t[off + 2] | t[off + 3] << 8;
			s->status_reg = get64(t + off + 24); /* GAS at +20, address at +4 */
			s->notify = t[off + 32];
			s->block_len = get32(t + off + 60);
			s->ack_reg = type == 10 ? get64(t + off + 68) : 0;
		}
		off += size;
	}
	return n;
}

static struct source find_source(unsigned id)
{
	struct source s[MAX_SOURCES];
	int n = parse_hest(s);
	for (int i = 0; i < n; i++)
		if (s[i].id == id)
			return s[i];
	fprintf(stderr, "labinj: no GHES source %u in HEST\n", id);
	exit(2);
}

static int cmd_hest(void)
{
	struct source s[MAX_SOURCES];
	int n = parse_hest(s);
	for (int i = 0; i < n; i++)
		printf("source id=%u type=%u notify=%u status_reg=0x%" PRIx64
		       " block=0x%" PRIx64 " block_len=%u ack_reg=0x%" PRIx64 "\n",
		       s[i].id, s[i].type, s[i].notify, s[i].status_reg,
		       read64(s[i].status_reg), s[i].block_len, s[i].ack_reg);
	return 0;
}

static size_t load_record(const char *path, unsigned char *buf, size_t max)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		die(path);
	ssize_t n = read(fd, buf, max + 1);
	close(fd);
	if (n <= 20 || (size_t)n > max) {
		fprintf(stderr, "labinj: record %s: %zd bytes (block holds %zu)\n", path, n, max);
		exit(2);
	}
	return n;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Copy the record into the source's block.  The kernel clears block_status
 * when it has consumed a record; a non-zero status means the previous record
 * is still pending, so wait (up to wait_ms) rather than overwrite it.
 */
static void write_block(const struct source *s, const unsigned char *rec, size_t len,
			int wait_ms)
{
	uint64_t block = read64(s->status_reg);
	if (!block) {
		fprintf(stderr, "labinj: source %u has no block (run setptr)\n", s->id);
		exit(2);
	}
	volatile uint32_t *b = map_phys(block, s->block_len);
	double deadline = now() + wait_ms / 1000.0;
	while (b[0] != 0) {
		if (now() > deadline) {
			fprintf(stderr, "labinj: source %u block busy (status 0x%x)\n", s->id, b[0]);
			exit(3);
		}
		usleep(1000);
	}
	size_t words = (len + 3) / 4;
	for (size_t i = 1; i < words; i++) {
		uint32_t w = 0;
		memcpy(&w, rec + 4 * i, len - 4 * i < 4 ? len - 4 * i : 4);
		b[i] = w;
	}
	__sync_synchronize();
	b[0] = get32(rec);
	__sync_synchronize();
	if (!quiet)
		printf("labinj: wrote %zu-byte record to block 0x%" PRIx64 " of source %u\n",
		       len, block, s->id);
}

static sigjmp_buf jump;
static volatile siginfo_t last_sig;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	(void)sig; (void)ctx;
	last_sig = *si;
	siglongjmp(jump, 1);
}

static void catch_sigbus(void)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER };
	sigaction(SIGBUS, &sa, NULL);
}

/* Run an access; report the SIGBUS it raised, if any.  Returns si_code or -1. */
#define EXPECT_SIGBUS(what, access)                                                  \
	({                                                                           \
		int code_ = -1;                                                      \
		if (sigsetjmp(jump, 1) == 0) {                                       \
			access;                                                      \
			printf("labinj: %s: no signal\n", what);                    \
		} else {                                                             \
			code_ = last_sig.si_code;                                    \
			printf("labinj: %s: SIGBUS si_code=%d addr=%p\n", what, code_, \
			       last_sig.si_addr);                                    \
		}                                                                    \
		fflush(stdout);                                                      \
		code_;                                                               \
	})

/* A page of our own, touched so it is backed, and its physical address; announced
 * ("labinj: <role> page pa=... pfn=... pid=...") for the host, which reads it. */
static volatile char *own_page(const char *role, uint64_t *pa)
{
	long pg = sysconf(_SC_PAGESIZE);
	volatile char *p = mmap(NULL, pg, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	memset((char *)p, 0x5a, pg);
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t ent = 0;
	if (fd < 0 || pread(fd, &ent, 8, ((uintptr_t)p / pg) * 8) != 8)
		die("pagemap");
	close(fd);
	if (!(ent & (1ULL << 63)) || !(ent & ((1ULL << 55) - 1)))
		die("page not present / PFN hidden");
	*pa = (ent & ((1ULL << 55) - 1)) * pg;
	printf("labinj: %s page pa=0x%" PRIx64 " pfn=0x%" PRIx64 " pid=%d\n",
	       role, *pa, *pa / pg, getpid());
	fflush(stdout);
	return p;
}

static void patch_victim(unsigned char *rec, size_t len, uint64_t pa)
{
	int hits = 0;
	for (size_t i = 0; i + 8 <= len; i++)
		if (get64(rec + i) == VICTIM_PLACEHOLDER) {
			memcpy(rec + i, &pa, 8);
			hits++;
		}
	if (!hits) {
		fprintf(stderr, "labinj: --victim but no placeholder in the record\n");
		exit(2);
	}
}

static int cmd_sea(unsigned id, const char *file, int victim)
{
	static unsigned char rec[65536];
	struct source s = find_source(id);
	size_t len = load_record(file, rec, s.block_len);
	uint64_t pa = 0;
	volatile char *page = NULL;
	if (victim) {
		page = own_page("victim", &pa);
		patch_victim(rec, len, pa);
	}
	volatile uint32_t *hole = map_phys(UNASSIGNED_PA, 4);
	write_block(&s, rec, len, 1000);
	catch_sigbus();
	/* The SEA is claimed by GHES, the load retried after the kernel cleared
	 * block_status, so the retry is unclaimed: a SIGBUS always ends this. */
	EXPECT_SIGBUS("sea load", (void)hole[0]);
	if (victim)
		EXPECT_SIGBUS("victim touch", (void)page[0]);
	return 0;
}

/* A storm through polled sources: each write waits for its block to clear. */
static int cmd_feed(int count, const char *file, char **ids, int nids)
{
	static unsigned char rec[65536];
	struct source s[MAX_SOURCES];
	for (int i = 0; i < nids && i < MAX_SOURCES; i++)
		s[i] = find_source(num(ids[i]));
	size_t len = load_record(file, rec, s[0].block_len);
	double t0 = now();
	quiet = 1;
	for (int i = 0; i < count; i++)
		write_block(&s[i % nids], rec, len, 5000);
	printf("labinj: fed %d records to %d sources in %.3f s\n", count, nids, now() - t0);
	return 0;
}

static int cmd_madvise(void)
{
	uint64_t pa;
	volatile char *page = own_page("madvise", &pa);
	catch_sigbus();
	/* 6.12 kills at once (MF_ACTION_REQUIRED from madvise itself); 6.1
	 * poisons quietly and the re-touch faults. */
	int code = EXPECT_SIGBUS("madvise", {
		if (madvise((void *)page, sysconf(_SC_PAGESIZE), MADV_HWPOISON))
			die("madvise(MADV_HWPOISON)");
	});
	if (code < 0)
		code = EXPECT_SIGBUS("re-touch", (void)page[0]);
	return code == BUS_MCEERR_AR ? 0 : 1;
}

static int cmd_hold(int seconds)
{
	uint64_t pa;
	volatile char *page = own_page("hold", &pa);
	catch_sigbus();
	/* An early-kill memory_failure sends BUS_MCEERR_AO while we sleep. */
	EXPECT_SIGBUS("hold", { sleep(seconds); (void)page[0]; });
	return 0;
}

static int cmd_peek(uint64_t pa, size_t len)
{
	volatile uint32_t *p = map_phys(pa, len);
	for (size_t i = 0; i < len / 4; i++)
		printf("%08x%s", p[i], i % 8 == 7 ? "\n" : " ");
	printf("\n");
	return 0;
}


int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *c = argc > 1 ? argv[1] : "";
	if (!strcmp(c, "hest"))
		return cmd_hest();
	if (!strcmp(c, "setptr") && argc == 4) {
		/* Our added sources' registers start as zero (= no block); the
		 * block itself must read "no error" before the kernel sees it. */
		volatile uint32_t *r = map_phys(num(argv[2]), 8);
		volatile uint32_t *b = map_phys(num(argv[3]), 20);
		uint64_t v = num(argv[3]);
		for (int i = 0; i < 5; i++)
			b[i] = 0;
		__sync_synchronize();
		r[0] = (uint32_t)v;
		r[1] = (uint32_t)(v >> 32);
		return 0;
	}
	if (!strcmp(c, "write") && argc >= 4) {
		static unsigned char rec[65536];
		struct source s = find_source(num(argv[2]));
		size_t len = load_record(argv[3], rec, s.block_len);
		write_block(&s, rec, len, argc > 4 ? atoi(argv[4]) : 2000);
		return 0;
	}
	if (!strcmp(c, "sea") && argc >= 4)
		return cmd_sea(num(argv[2]), argv[3], argc > 4 && !strcmp(argv[4], "--victim"));
	if (!strcmp(c, "feed") && argc >= 5)
		return cmd_feed(atoi(argv[2]), argv[3], argv + 4, argc - 4);
	if (!strcmp(c, "madvise"))
		return cmd_madvise();
	if (!strcmp(c, "hold") && argc == 3)
		return cmd_hold(atoi(argv[2]));
	if (!strcmp(c, "peek") && argc == 4)
		return cmd_peek(num(argv[2]), num(argv[3]));
	fprintf(stderr, "usage: see the comment at the top of labinj.c\n");
	return 2;
}
