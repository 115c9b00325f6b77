/*
 * labvmm: the lab's own tiny VMM on the KVM API (static arm64, runs in the
 * L1 guest of `-M virt,ras=on,virtualization=on`, where /dev/kvm exists).
 *
 *   labvmm mmio COUNT [REPEAT]      COUNT MMIO-write exits, REPEAT timed runs
 *   labvmm sea [--wait-file PATH]   touch IPA 0x20000000, ring the "arm"
 *                                   doorbell, then load IPA 0x20001000
 *   labvmm vserror [ESR]            KVM_SET_VCPU_EVENTS: virtual SError
 *                                   (with ESR: serror_has_esr)
 *
 * The L2 guest is a few instructions (assembled below, position independent,
 * loaded at IPA 0): vectors at 0, then the code, MMIO doorbells at
 * 0x30000000.  It runs with its MMU off and SError unmasked, and its vectors
 * report ESR_EL1/FAR_EL1/ELR_EL1 and the vector offset through MMIO.
 *
 * The vCPU runs on its own thread named "CPU 0/KVM" (QEMU's name for it), so
 * the kernel's KVM paths run in that thread; the VMM process is otherwise
 * anonymous.  SIGBUS is caught on every thread and reported at the end:
 * memory_failure() signals the VMM when the page behind a guest address is
 * poisoned.
 *
 * Output: "labvmm: key=value ..." lines, parsed by tests/lab/kvm_scenarios.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RAM_IPA 0x0UL
#define RAM_SIZE 0x10000UL
#define DATA_IPA 0x20000000UL /* sea: a 2 MiB slot (one level-3 table) */
#define DATA_SIZE 0x200000UL
#define TARGET_IPA (DATA_IPA + 0x1000) /* the page the SEA is for */
#define MMIO 0x30000000UL
#define MMIO_TICK (MMIO + 0x00)   /* one per loop iteration */
#define MMIO_DONE (MMIO + 0x08)   /* value: 0 mmio, 1 sea load returned, 2 no SError, 0x100 vector */
#define MMIO_ESR (MMIO + 0x10)
#define MMIO_FAR (MMIO + 0x18)
#define MMIO_ELR (MMIO + 0x20)
#define MMIO_VEC (MMIO + 0x28)
#define MMIO_VALUE (MMIO + 0x30)  /* sea: what the load returned */
#define MMIO_READY (MMIO + 0x38)  /* vserror: inject now */
#define MMIO_ARM (MMIO + 0x1000)  /* sea: labsea.ko redirects the walk on this exit */

enum { MODE_MMIO, MODE_SEA, MODE_VSERROR };

/* The L2 guest.  x0 = mode, x1 = count, x2 = target IPA. */
__asm__(
	".pushsection .rodata.l2guest, \"a\"\n"
	".balign 2048\n"
	".global l2_start\n"
	"l2_start:\n"
	".set vec_off, 0\n"
	".rept 16\n"
	"	mov x9, #vec_off\n"
	"	b l2_vector\n"
	"	.balign 0x80\n"
	"	.set vec_off, vec_off + 0x80\n"
	".endr\n"
	"l2_vector:\n"
	"	movz x10, #0x3000, lsl #16\n"
	"	mrs x11, esr_el1\n"
	"	str x11, [x10, #0x10]\n"
	"	mrs x11, far_el1\n"
	"	str x11, [x10, #0x18]\n"
	"	mrs x11, elr_el1\n"
	"	str x11, [x10, #0x20]\n"
	"	str x9, [x10, #0x28]\n"
	"	mov x11, #0x100\n"
	"	str x11, [x10, #0x08]\n"
	"	b .\n"
	".global l2_entry\n"
	"l2_entry:\n"
	"	msr vbar_el1, xzr\n"
	"	isb\n"
	"	msr daifclr, #4\n" /* unmask SError */
	"	movz x10, #0x3000, lsl #16\n"
	"	cmp x0, #1\n"
	"	b.eq 20f\n"
	"	cmp x0, #2\n"
	"	b.eq 30f\n"
	/* mmio: x1 exits */
	"	cbz x1, 12f\n"
	"11:	str x1, [x10]\n"
	"	subs x1, x1, #1\n"
	"	b.ne 11b\n"
	"12:	str xzr, [x10, #0x08]\n"
	"	b .\n"
	/* sea: map the slot's first page, ring ARM, load the target */
	"20:	sub x3, x2, #0x1000\n"
	"	ldr x4, [x3]\n"
	"	add x5, x10, #0x1000\n"
	"	str x4, [x5]\n"
	"	ldr x4, [x2]\n"
	"	str x4, [x10, #0x30]\n"
	"	mov x11, #1\n"
	"	str x11, [x10, #0x08]\n"
	"	b .\n"
	/* vserror: ring READY, spin x1 times with SError unmasked */
	"30:	str x1, [x10, #0x38]\n"
	"31:	subs x1, x1, #1\n"
	"	b.ne 31b\n"
	"	mov x11, #2\n"
	"	str x11, [x10, #0x08]\n"
	"	b .\n"
	".global l2_end\n"
	"l2_end:\n"
	".popsection\n");
extern const unsigned char l2_start[], l2_entry[], l2_end[];

static int kvm, vm, vcpu, mode;
static struct kvm_run *run;
static uint64_t count = 1000, serror_esr;
static int serror_has_esr;
static const char *wait_file;
static uint8_t *data; /* sea: host mapping of the data slot */

#define MAX_SIGS 16
static volatile int nsigs;
static volatile struct { int code, tid; void *addr; } sigs[MAX_SIGS];

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	int n = __sync_fetch_and_add(&nsigs, 1);
	if (n < MAX_SIGS) {
		sigs[n].code = si->si_code;
		sigs[n].addr = si->si_addr;
		sigs[n].tid = syscall(SYS_gettid);
	}
}

static void die(const char *what)
{
	printf("labvmm: error=%s errno=%d (%s)\n", what, errno, strerror(errno));
	exit(2);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t core_reg(size_t off)
{
	return KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (off / sizeof(uint32_t));
}

static void set_reg(size_t off, uint64_t val)
{
	struct kvm_one_reg r = { .id = core_reg(off), .addr = (uintptr_t)&val };
	if (ioctl(vcpu, KVM_SET_ONE_REG, &r) < 0)
		die("KVM_SET_ONE_REG");
}

static void *slot(int id, uint64_t ipa, size_t size)
{
	void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		die("mmap");
	/* 4 KiB stage-2 mappings: the SEA needs a level-3 table under the slot */
	madvise(m, size, MADV_NOHUGEPAGE);
	struct kvm_userspace_memory_region r = {
		.slot = id, .guest_phys_addr = ipa, .memory_size = size,
		.userspace_addr = (uintptr_t)m,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	return m;
}

static uint64_t pa_of(void *va)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t ent = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0 || pread(fd, &ent, 8, ((uintptr_t)va / pg) * 8) != 8)
		die("pagemap");
	close(fd);
	if (!(ent & (1ULL << 63)))
		return 0;
	return (ent & ((1ULL << 55) - 1)) * pg + ((uintptr_t)va & (pg - 1));
}

static void reset_vcpu(void)
{
	struct kvm_vcpu_init init;
	if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0)
		die("KVM_ARM_PREFERRED_TARGET");
	if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0)
		die("KVM_ARM_VCPU_INIT");
	set_reg(offsetof(struct kvm_regs, regs.pc), RAM_IPA + (l2_entry - l2_start));
	set_reg(offsetof(struct kvm_regs, regs.regs[0]), mode);
	set_reg(offsetof(struct kvm_regs, regs.regs[1]), count);
	set_reg(offsetof(struct kvm_regs, regs.regs[2]), TARGET_IPA);
}

static void wait_for_file(void)
{
	double deadline = now() + 120;
	struct stat st;
	while (stat(wait_file, &st) != 0) {
		if (now() > deadline) {
			printf("labvmm: error=wait-file-timeout\n");
			exit(3);
		}
		usleep(10000);
	}
}

struct report {
	uint64_t esr, far, elr, vec, value, done;
	int have_exc, done_set, armed, injected;
	uint64_t ticks;
	const char *stop;
};

/* Run the vCPU until the guest reports done, a fatal exit, or a BUS_MCEERR_AR. */
static void run_guest(struct report *rep)
{
	memset(rep, 0, sizeof *rep);
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				for (int i = 0; i < nsigs && i < MAX_SIGS; i++)
					if (sigs[i].code == BUS_MCEERR_AR) {
						rep->stop = "sigbus-ar";
						return;
					}
				continue;
			}
			if (errno == EFAULT || errno == EHWPOISON) {
				rep->stop = errno == EFAULT ? "efault" : "ehwpoison";
				return;
			}
			die("KVM_RUN");
		}
		if (run->exit_reason != KVM_EXIT_MMIO) {
			printf("labvmm: exit_reason=%u\n", run->exit_reason);
			rep->stop = "exit-reason";
			return;
		}
		uint64_t addr = run->mmio.phys_addr, val = 0;
		memcpy(&val, run->mmio.data, run->mmio.len > 8 ? 8 : run->mmio.len);
		if (!run->mmio.is_write) { /* a read of MMIO: answer 0 */
			memset(run->mmio.data, 0, sizeof run->mmio.data);
			continue;
		}
		switch (addr) {
		case MMIO_TICK: rep->ticks++; break;
		case MMIO_ESR: rep->esr = val; rep->have_exc = 1; break;
		case MMIO_FAR: rep->far = val; break;
		case MMIO_ELR: rep->elr = val; break;
		case MMIO_VEC: rep->vec = val; break;
		case MMIO_VALUE: rep->value = val; break;
		case MMIO_ARM:
			rep->armed = 1;
			if (wait_file) {
				printf("labvmm: at-arm-doorbell\n");
				fflush(stdout);
			}
			break;
		case MMIO_READY:
			if (mode == MODE_VSERROR) {
				struct kvm_vcpu_events ev;
				memset(&ev, 0, sizeof ev);
				ev.exception.serror_pending = 1;
				ev.exception.serror_has_esr = serror_has_esr;
				ev.exception.serror_esr = serror_esr;
				if (ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev) < 0)
					die("KVM_SET_VCPU_EVENTS");
				rep->injected = 1;
			}
			break;
		case MMIO_DONE:
			rep->done = val;
			rep->done_set = 1;
			rep->stop = "done";
			return;
		default:
			printf("labvmm: unexpected mmio addr=0x%" PRIx64 "\n", addr);
			rep->stop = "bad-mmio";
			return;
		}
	}
}

static int repeat = 1;
static int status;

static void *vcpu_thread(void *arg)
{
	(void)arg;
	struct report rep = { 0 };
	/* named by the thread itself before it enters KVM (as QEMU's vCPU threads are),
	 * so every kernel event of this thread carries the name */
	prctl(PR_SET_NAME, "CPU 0/KVM");
	printf("labvmm: vcpu_tid=%ld\n", (long)syscall(SYS_gettid));
	if (mode == MODE_SEA) {
		/* Back both pages; the first is mapped into stage 2 by the guest's
		 * own first load, the target only when it is walked. */
		data[0] = 1;
		data[TARGET_IPA - DATA_IPA] = 2;
		printf("labvmm: target ipa=0x%lx hva=%p pa=0x%" PRIx64 "\n", TARGET_IPA,
		       data + (TARGET_IPA - DATA_IPA), pa_of(data + (TARGET_IPA - DATA_IPA)));
		fflush(stdout);
		if (wait_file)
			wait_for_file();
	}
	for (int r = 0; r < repeat; r++) {
		reset_vcpu();
		double t0 = now();
		run_guest(&rep);
		double dt = now() - t0;
		if (mode == MODE_MMIO) {
			printf("labvmm: mmio run=%d exits=%" PRIu64 " seconds=%.6f us_per_exit=%.3f\n",
			       r, rep.ticks, dt, rep.ticks ? dt * 1e6 / rep.ticks : 0.0);
			if (rep.ticks != count || !rep.done_set)
				status = 1;
		}
	}
	printf("labvmm: result stop=%s done=0x%" PRIx64 " armed=%d injected=%d",
	       rep.stop ? rep.stop : "?", rep.done, rep.armed, rep.injected);
	if (rep.have_exc)
		printf(" esr=0x%" PRIx64 " far=0x%" PRIx64 " elr=0x%" PRIx64 " vector=0x%" PRIx64,
		       rep.esr, rep.far, rep.elr, rep.vec);
	if (mode == MODE_SEA && rep.done == 1)
		printf(" value=0x%" PRIx64, rep.value);
	printf("\n");
	return NULL;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		goto usage;
	if (!strcmp(argv[1], "mmio")) {
		mode = MODE_MMIO;
		if (argc > 2)
			count = strtoull(argv[2], NULL, 0);
		if (argc > 3)
			repeat = atoi(argv[3]);
	} else if (!strcmp(argv[1], "sea")) {
		mode = MODE_SEA;
		if (argc > 3 && !strcmp(argv[2], "--wait-file"))
			wait_file = argv[3];
	} else if (!strcmp(argv[1], "vserror")) {
		mode = MODE_VSERROR;
		count = 200000; /* spin long enough for any pending SError */
		if (argc > 2) {
			serror_has_esr = 1;
			serror_esr = strtoull(argv[2], NULL, 0);
		}
	} else {
		goto usage;
	}

	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
	sigaction(SIGBUS, &sa, NULL);

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	if (serror_has_esr && ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_ARM_INJECT_SERROR_ESR) <= 0) {
		printf("labvmm: error=no-KVM_CAP_ARM_INJECT_SERROR_ESR\n");
		return 4;
	}
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	uint8_t *ram = slot(0, RAM_IPA, RAM_SIZE);
	memcpy(ram, l2_start, l2_end - l2_start);
	if (mode == MODE_SEA)
		data = slot(1, DATA_IPA, DATA_SIZE);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	printf("labvmm: pid=%d mode=%s image=%ld\n", getpid(), argv[1], (long)(l2_end - l2_start));

	pthread_t t;
	if (pthread_create(&t, NULL, vcpu_thread, NULL))
		die("pthread_create");
	pthread_join(t, NULL);
	if (mode == MODE_SEA) {
		/* memory_failure() may signal us a little after the guest is done */
		for (int i = 0; i < 300 && !nsigs; i++)
			usleep(10000);
		usleep(nsigs ? 300000 : 0);
	}

	for (int i = 0; i < nsigs && i < MAX_SIGS; i++)
		printf("labvmm: SIGBUS si_code=%d addr=%p tid=%d\n", sigs[i].code, sigs[i].addr,
		       sigs[i].tid);
	printf("labvmm: end status=%d\n", status);
	return status;
usage:
	fprintf(stderr, "usage: see the comment at the top of labvmm.c\n");
	return 2;
}
